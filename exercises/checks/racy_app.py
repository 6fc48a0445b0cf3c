"""A pytest plugin that breaks main.py on purpose for exercise 5: POST /users/ is replaced by a
route that looks for the username with a SELECT before the INSERT, and nothing turns the unique
index's IntegrityError into a 409: the route answers it with a 500 of its own. One request at
a time, a duplicate still gets 409; two at once both pass the check, and one of them gets a 500.
The route opens its own session on main.db_engine, so it works with the dependency of today's
main.py and with exercise 6's SessionLocal alike."""

import time

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import main


def racy_create_user(user: main.UserInput) -> main.UserTable:
    with Session(main.db_engine, expire_on_commit=False) as session:
        query = select(main.UserTable).where(main.UserTable.username == user.username)
        if session.scalar(query) is not None:
            raise HTTPException(409, "Username already taken")
        time.sleep(0.05)  # the window between the check and the INSERT, made wide
        new_user = main.UserTable(username=user.username, email=user.email)
        session.add(new_user)
        try:
            session.commit()  # a duplicate that slipped through the check fails here
        except IntegrityError:  # and no safety net answers 409: a 500, as an answer (a test
            # that only sends the requests, and checks nothing, passes here: the check sees it)
            raise HTTPException(500, "a duplicate slipped through the check") from None
        return new_user


main.app.router.routes[:] = [
    route
    for route in main.app.router.routes
    if not (getattr(route, "path", "") == "/users/" and "POST" in getattr(route, "methods", ()))
]
main.app.post("/users/", response_model=main.UserOutput, status_code=201)(racy_create_user)
