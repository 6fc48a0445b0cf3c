"""/docs and /redoc work with no network beyond the app, and guide a first request: main.py's and
its async twin's (conftest.py's `app_module` and `app_folder`)."""

import os
import re
import shutil
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
    }
    for key, codes in expected.items():
        operation = operations[key]
        assert set(operation["responses"]) == codes, key
        assert operation["summary"], key
    example = schema["components"]["schemas"]["UserInput"]["properties"]
    assert example["username"]["examples"] == ["ada"]
    assert example["email"]["examples"] == ["ada@example.com"]


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
                page.screenshot(path=SCREENSHOTS / shot)
            operation.get_by_role("button", name="Clear").click()
        browser.close()
    assert statuses == ["201", "409"]
    assert [row[1:] for row in rows()] == [("ada", "ada@example.com")]
    assert outside_requests == []
