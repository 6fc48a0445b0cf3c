"""Whatever a client sends, the app answers with a documented 4xx, never a 5xx: main.py and its
async twin, main_async.py (conftest.py's `app_module`)."""

import copy
import json

import pytest

import main
from conftest import need

schemathesis = need("schemathesis")  # without the tools (requirements-test.txt), skipped
hypothesis = need("hypothesis")
strategies = need("hypothesis.strategies")
checks = need("schemathesis.specs.openapi.checks")

# Schemathesis's own e-mail addresses include reserved domains such as ".test", which the
# email-validator package refuses by design; Hypothesis's addresses use real top-level domains.
schemathesis.openapi.format("email", strategies.emails())
# Built from the app's schema directly: fetching /openapi.json would start the app (and its
# database) at import time, before the fixtures point it at a test database. The twin serves the
# same schema (the last test here). Each case is sent through the test's own client, on the loop
# where that app's connections live; schemathesis's own ASGI client would start another.
MAIN_SCHEMA = main.app.openapi()  # main.py's, read now: for the twin's cases, `main` is the twin
schema = schemathesis.openapi.from_dict(copy.deepcopy(MAIN_SCHEMA))
# Excluded: when two routes share a path (GET and POST /users/), Starlette's 405 answer lists
# only one route's method in its Allow header. A framework limit, not the app's. And a username's
# rules past its pattern cannot be written in OpenAPI: NFKC may fold 50 characters into more, and
# Unicode's category Cf (invisible, direction-changing) has no pattern in JSON Schema's regular
# expressions. Such a name gets its documented 422.
EXCLUDED = [checks.allow_header_conformance, checks.positive_data_acceptance]


def send(client, case):
    """The case's request, sent by a TestClient (schemathesis writes it for `requests`)."""
    request = case.as_transport_kwargs(base_url=str(client.base_url))
    body = {"json": request.pop("json")} if "json" in request else {}
    if "data" in request:  # raw bytes or text: httpx calls them content
        body = {"content": request.pop("data")}
    assert not request.pop("cookies"), "the schema declares no cookie"
    return client.request(**request, **body)


@schema.parametrize()
@hypothesis.settings(
    max_examples=40,
    derandomize=True,  # the same examples on every run
    deadline=None,
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture,
        hypothesis.HealthCheck.too_slow,
    ],
)
def test_generated_requests_get_documented_answers_and_no_5xx(client, case):
    case.validate_response(send(client, case), excluded_checks=EXCLUDED)


def test_one_megabyte_username_is_refused_unread_with_413(client, rows):
    response = client.post("/users/", json={"username": "a" * 1_000_000, "email": "a@example.com"})
    assert response.status_code == 413
    assert response.text == "Content Too Large"
    assert rows() == []


def test_a_username_just_too_long_in_a_small_body_returns_422(client, rows):
    response = client.post("/users/", json={"username": "a" * 51, "email": "a@example.com"})
    assert response.status_code == 422
    assert rows() == []


def test_a_body_that_is_not_utf8_text_returns_400(client, rows):
    body = b'{"username": "\xff\xfe", "email": "a@example.com"}'
    response = client.post("/users/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400  # README, section 3
    assert response.json() == {"detail": "There was an error parsing the body"}
    assert rows() == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_json_body_in_utf16_or_utf32_is_read_as_the_readme_says(client, rows, encoding):
    body = '{"username": "ada", "email": "a@example.com"}'.encode(encoding)  # with its BOM
    response = client.post("/users/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 201  # README, section 3: Python's JSON reader detects them
    assert [row[1] for row in rows()] == ["ada"]


def test_a_number_longer_than_python_reads_returns_400(client, rows):
    body = '{"username": "ada", "email": "a@example.com", "age": ' + "9" * 5000 + "}"
    response = client.post("/users/", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400  # README, section 3: more than 4300 digits
    assert response.json() == {"detail": "There was an error parsing the body"}
    assert rows() == []


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("POST", "/users/", '{"username": "a\\ud800b", "email": "a@example.com"}', "username"),
        ("PATCH", "/users/1", '{"email": "\\udfff@example.com"}', "email"),
    ],
)
def test_half_a_utf16_pair_in_a_field_returns_422_naming_it(
    client, rows, method, path, body, field
):
    # "\ud800" alone is valid JSON but no text: Pydantic refuses it, and the 422 that echoes it
    # must still be sent.
    headers = {"content-type": "application/json"}
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert rows() == []


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/users/", '{"username": NaN, "email": "a@example.com"}'),
        ("POST", "/users/", '{"username": "ada", "email": Infinity}'),
        ("POST", "/users/", "-Infinity"),
        ("POST", "/users/", "1e999"),  # a number too large for a float: Python reads it as inf
        ("PATCH", "/users/1", '{"username": NaN}'),
    ],
)
def test_a_number_json_cannot_send_back_returns_422(client, rows, method, path, body):
    # Python's JSON reads NaN and Infinity, which JSON has no way to write: the 422 that echoes
    # them must still be sent.
    headers = {"content-type": "application/json"}
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert rows() == []


def test_deeply_nested_json_returns_4xx(client, rows):
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/users/", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert rows() == []


@pytest.mark.parametrize("depth", [1_000, 9_000])  # under 64 KiB; deeper than Python recurses
def test_json_nested_deeper_than_python_recurses_returns_4xx_with_a_detail(client, rows, depth):
    # Python 3.11's parser gives up (400); 3.13's parses it, and its 422 cannot show it back.
    user_id = client.post("/users/", json={"username": "ada", "email": "a@example.com"}).json()
    nested = "[" * depth + "]" * depth
    headers = {"content-type": "application/json"}
    for method, path, body in [
        ("POST", "/users/", nested),
        ("POST", "/users/", '{"username": "n", "email": ' + nested + "}"),
        ("PATCH", f"/users/{user_id['id']}", '{"email": ' + nested + "}"),
    ]:
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code in (400, 422), (method, body[:30], response.text[:300])
        assert response.json()["detail"]
    assert [row[1:] for row in rows()] == [("ada", "a@example.com")]


def test_nested_json_in_a_field_returns_422(client, rows):
    nested = json.loads("{" + '"a": {' * 50 + "}" * 51)
    response = client.post("/users/", json={"username": nested, "email": "a@example.com"})
    assert response.status_code == 422
    assert rows() == []


def test_ids_outside_64_bit_range_return_422(client):
    for user_id in [str(2**63), str(2**64 + 1), "-" + str(2**63 + 1), "1" + "0" * 40]:
        for method in ("GET", "PATCH", "DELETE"):
            response = client.request(method, f"/users/{user_id}", json={})
            assert response.status_code == 422, (method, user_id)


def test_the_cases_are_generated_from_the_schema_this_app_serves(client):
    assert client.get("/openapi.json").json() == MAIN_SCHEMA
