"""A pytest plugin that breaks main.py on purpose for exercise 5: a username is checked with a
SELECT before the INSERT, and the IntegrityError is no longer turned into a 409. One request at
a time, duplicates still get 409; two at once both pass the check and one gets a 500."""

import time

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

import main


async def racy_run_in_transaction(session, work):
    def in_thread():
        with session.begin():
            result = work()
            for user in list(session.new):
                with session.no_autoflush:  # look before the INSERT is sent
                    query = select(main.UserTable).where(main.UserTable.username == user.username)
                    if session.scalar(query) is not None:
                        raise HTTPException(409, "Username already taken")
            time.sleep(0.05)  # the window between the check and the INSERT, made wide
            return result

    return await run_in_threadpool(in_thread)


main.run_in_transaction = racy_run_in_transaction
