# The tutorial's app (sections 3 to 5), typed in from its listings for side-by-side benchmarks.
# Deliberately left as the tutorial writes it, old imports and all; two additions only:
# - the URL comes from DATABASE_URL, so bench/run.py can point it at its database;
# - GET /users/{user_id}, a read route in the same style, so that reads can be compared too.
import os

from fastapi import FastAPI, Depends
from sqlalchemy.orm import Session
from sqlalchemy import Column, Integer, String, create_engine
from sqlalchemy.ext.declarative import declarative_base
from pydantic import BaseModel

DB_URL = os.environ.get("DATABASE_URL", "mysql+pymysql://username:password@localhost/db_name")
db_engine = create_engine(DB_URL)

BaseModelClass = declarative_base()


class UserTable(BaseModelClass):
    __tablename__ = "users"

    id = Column(Integer, primary_key=True, index=True)
    username = Column(String(50), unique=True, index=True)
    email = Column(String(120))


class UserInput(BaseModel):
    username: str
    email: str


def get_session():
    session = Session(bind=db_engine)
    try:
        yield session
    finally:
        session.close()


app = FastAPI()


@app.get("/")
def read_root():
    return {"message": "Hello, World!"}


@app.post("/users/")
def create_user(user: UserInput, session: Session = Depends(get_session)):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    session.refresh(new_user)
    return {"id": new_user.id, "username": new_user.username, "email": new_user.email}


@app.get("/users/{user_id}")  # not in the tutorial: the same shape, reading one row
def read_user(user_id: int, session: Session = Depends(get_session)):
    user = session.get(UserTable, user_id)
    return {"id": user.id, "username": user.username, "email": user.email}


BaseModelClass.metadata.create_all(bind=db_engine)
