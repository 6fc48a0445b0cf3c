"""A pytest plugin that breaks main.py on purpose for exercise 5: a username is checked with a
SELECT before the INSERT, and the IntegrityError is no longer turned into a 409. One request at
a time, duplicates still get 409; two at once both pass the check and one gets a 500."""

import time

from fastapi import HTTPException
from sqlalchemy import select

import main


def racy_commit_or_409(session) -> None:
    for user in session.new:
        taken = session.scalar(
            select(main.UserTable).where(main.UserTable.username == user.username)
        )
        if taken is not None:
            raise HTTPException(409, "Username already taken")
    time.sleep(0.05)  # the window between the check and the INSERT, made wide
    session.commit()


main.commit_or_409 = racy_commit_or_409
