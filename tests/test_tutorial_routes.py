"""A learner's own routes, written the tutorial's way, stay safe under load (issue 11).

The two routes below are appended to a copy of main.py exactly as a student writes them: plain
`def`, the tutorial's literal `session: Session = Depends(get_session)`, add/commit/refresh, a
returned dict, and a FastAPI-docs-style read that returns the ORM object through a
`response_model`. Nothing in them knows about pools, threads or limits: get_session must.
"""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx2

from conftest import url_of
from tests.support import UvicornServer, copy_app

LEARNER_ROUTES = """

# --- Added by a learner, the tutorial's way -------------------------------------------------
from fastapi import Depends, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session


class LearnerUser(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    username: str
    email: str


@app.post("/learner/users/")
def learner_create_user(user: UserInput, session: Session = Depends(get_session)):
    new_user = UserTable(username=user.username, email=user.email)
    session.add(new_user)
    session.commit()
    session.refresh(new_user)
    return {"id": new_user.id, "username": new_user.username, "email": new_user.email}


@app.get("/learner/users/{user_id}", response_model=LearnerUser)
def learner_read_user(user_id: int, session: Session = Depends(get_session)):
    user = session.get(UserTable, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user
"""

CLIENTS = 64
REQUESTS = 640


def test_learner_routes_under_64_clients_all_answer_2xx(mysql_engine, tmp_path):
    server = UvicornServer(url_of(mysql_engine), cwd=copy_app(tmp_path, LEARNER_ROUTES))
    limits = httpx2.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    with server.wait_started(), server.client(limits=limits, timeout=30) as http:
        seed = http.post("/learner/users/", json={"username": "seed", "email": "s@example.com"})
        assert seed.status_code == 200, seed.text
        seed_id = seed.json()["id"]

        def one(number: int) -> str:
            body = {"username": f"user{number}", "email": "a@example.com"}
            calls = [  # the learner's two routes, mixed with the app's own
                lambda: http.post("/learner/users/", json=body),
                lambda: http.get(f"/learner/users/{seed_id}"),
                lambda: http.post("/users/", json=body),
                lambda: http.get(f"/users/{seed_id}"),
                lambda: http.get("/users/", params={"limit": 10}),
            ]
            try:
                return str(calls[number % len(calls)]().status_code)
            except httpx2.TimeoutException:
                return "timeout"

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            outcomes = Counter(pool.map(one, range(REQUESTS)))
        seconds = time.monotonic() - started
    print(f"\n{REQUESTS} requests from {CLIENTS} clients in {seconds:.1f} s: {dict(outcomes)}")
    assert set(outcomes) <= {"200", "201"}, dict(outcomes)
