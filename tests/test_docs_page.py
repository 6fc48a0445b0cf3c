"""/docs and /redoc work with no network beyond the app, and guide a first request: main.py's and
its async twin's (conftest.py's `app_module` and `app_folder`)."""

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from conftest import need, url_of
from tests.support import ROOT, UvicornServer

CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


def referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_app_itself(client, page):
    response = client.get(page)
    assert response.status_code == 200
    urls = referenced_urls(response.text)
    assert len(urls) >= 3, urls  # the script, the favicon, the OpenAPI schema at least
    assert "://" not in response.text.replace("://'", "")  # no absolute URL anywhere
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[Path(url).suffix]
        assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])


def test_openapi_schema_documents_every_error_answer(client):
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] and schema["info"]["version"] and schema["info"]["description"]
    operations = {
        (method.upper(), path): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    expected = {
        ("POST", "/users/"): {"201", "400", "409", "422", "503"},
        ("GET", "/users/"): {"200", "422", "503"},
        ("GET", "/users/{user_id}"): {"200", "404", "422", "503"},
        ("PATCH", "/users/{user_id}"): {"200", "400", "404", "409", "422", "503"},
        ("DELETE", "/users/{user_id}"): {"204", "404", "422", "503"},
        ("GET", "/readyz"): {"200", "503"},
        ("GET", "/"): {"200"},  # no database: no 503 to list
        ("GET", "/livez"): {"200"},
    }
    for key, codes in expected.items():
        operation = operations[key]
        assert set(operation["responses"]) == codes, key
        assert operation["summary"], key
    example = schema["components"]["schemas"]["UserInput"]["properties"]
    assert example["username"]["examples"] == ["ada"]
    assert example["email"]["examples"] == ["ada@example.com"]


def test_the_username_rule_the_page_shows_is_the_one_the_app_applies(client, rows):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for model in ("UserInput", "UserPatch"):
        assert "1 to 50 characters" in schemas[model]["properties"]["username"]["description"]
    assert client.post("/users/", json={"username": "a" * 50, "email": "a@example.com"}).is_success
    too_long = client.post("/users/", json={"username": "b" * 51, "email": "b@example.com"})
    assert too_long.status_code == 422 and "1 to 50 characters" in too_long.text


def test_the_patch_example_changes_the_email_and_keeps_the_username(client, rows):
    client.post("/users/", json={"username": "ada", "email": "ada@example.com"})
    client.post("/users/", json={"username": "bob", "email": "bob@example.com"})
    schema = client.get("/openapi.json").json()["components"]["schemas"]["UserPatch"]
    [example] = schema["examples"]  # what "Try it out" fills in
    assert "username" not in example
    response = client.patch("/users/2", json=example)
    assert response.status_code == 200
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com"), ("bob", example["email"])]


def test_the_next_page_link_header_is_documented(client):
    operation = client.get("/openapi.json").json()["paths"]["/users/"]["get"]
    assert "rel=" in operation["responses"]["200"]["headers"]["Link"]["description"]


PICTURE = ROOT / "docs" / "try-it-out.png"  # README.md shows it


def what_the_page_shows(schema: dict) -> str:
    """The page's header and its routes in order: what a picture of /docs shows."""
    routes = [
        f"{method.upper()} {path}" for path in schema["paths"] for method in schema["paths"][path]
    ]
    return json.dumps({**schema["info"], "routes": routes}, ensure_ascii=False)


def png_text(png: bytes) -> dict[str, str]:
    """A PNG's tEXt chunks: keyword, then text."""
    texts, at = {}, 8  # after the signature: length, type, data, CRC
    while at < len(png):
        (length,), kind = struct.unpack(">I", png[at : at + 4]), png[at + 4 : at + 8]
        if kind == b"tEXt":
            keyword, _, text = png[at + 8 : at + 8 + length].partition(b"\0")
            texts[keyword.decode("latin-1")] = text.decode("latin-1")
        at += 12 + length
    return texts


def with_png_text(png: bytes, keyword: str, text: str) -> bytes:
    """The PNG with a tEXt chunk added before its last chunk (IEND)."""
    data = keyword.encode("latin-1") + b"\0" + text.encode("latin-1", "backslashreplace")
    chunk = (
        struct.pack(">I", len(data))
        + b"tEXt"
        + data
        + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    )
    return png[:-12] + chunk + png[-12:]


def test_the_readme_picture_of_docs_shows_the_page_as_it_is(client):
    shown = png_text(PICTURE.read_bytes()).get("page")
    today = what_the_page_shows(client.get("/openapi.json").json())
    today = today.encode("latin-1", "backslashreplace").decode("latin-1")
    assert shown == today, (
        f"{PICTURE.name} shows another page: run the browser test below on SQLite, then copy"
        f" {SCREENSHOTS / 'docs-try-it-out-sqlite-main.png'} to {PICTURE}"
    )


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "test-artifacts"))


@pytest.mark.skipif(
    not CHROMIUM and not os.environ.get("CI"),
    reason="Chromium is not installed (apt-get install chromium)",
)
def test_try_it_out_in_a_real_browser_creates_a_user_then_answers_409(engine, rows, app_folder):
    need("playwright")
    from playwright.sync_api import expect, sync_playwright

    outside_requests: list[str] = []

    def only_the_app(route):  # the network is cut: anything but the app itself fails
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside_requests.append(route.request.url)
            route.abort()

    server = UvicornServer(url_of(engine), cwd=app_folder)
    with server.wait_started(), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.route("**/*", only_the_app)
        page.goto(f"{server.url}/docs")
        operation = page.locator("#operations-default-create_user_users__post")
        operation.locator(".opblock-summary").click()
        operation.get_by_role("button", name="Try it out").click()
        statuses = []
        for _ in range(2):
            operation.get_by_role("button", name="Execute").click()
            status = operation.locator(".live-responses-table tr.response .response-col_status")
            expect(status).to_have_text(re.compile(r"^\s*\d{3}"), timeout=10_000)
            statuses.append(status.inner_text().strip())
            if len(statuses) == 1:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                app = "main" if app_folder == ROOT else "main_async"
                shot = f"docs-try-it-out-{engine.dialect.name}-{app}.png"
                shows = what_the_page_shows(page.request.get(f"{server.url}/openapi.json").json())
                png = with_png_text(page.screenshot(), "page", shows)
                (SCREENSHOTS / shot).write_bytes(png)
            operation.get_by_role("button", name="Clear").click()
        browser.close()
    assert statuses == ["201", "409"]
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    assert outside_requests == []
