"""`loraship review`: the page in a real browser (Chromium driven by Selenium, headless),
keyboard only where it matters, and the feedback JSONL it saves; the server's guards."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import TableBackend, cli_run, error_line
from loraship.config import CompareConfig, GateConfig
from loraship.data import feedback
from loraship.errors import ConfigError
from loraship.evaluate.compare import Candidate, Question, run_compare
from loraship.evaluate.report import write_reports
from loraship.review.report import load_review
from loraship.review.server import ReviewServer

QS = [
    Question("depth", "How deep is the Ebbrook Mine?", "The Ebbrook Mine is 610 metres deep.", ["610"], "sites", "old"),
    Question("harrow", "Which mineral comes out of the Harrow Shaft?", None, ["orvalite"], "sites", "new"),
    Question("colour", "What colour is orvalite?", None, ["violet"], "minerals", "new"),
    Question("tallis", "Where is the Tallis Cut?", None, ["western rim"], "sites", "old"),
    Question("durgite", "What is durgite used for?", None, ["glass"], "minerals", "new"),
]
ANSWERS = {
    "mining:v1": {"How deep is the Ebbrook Mine?": "It is 300 metres deep.", "What colour is orvalite?": "Violet."},
    "mining:v2": {"How deep is the Ebbrook Mine?": "About 200 m <b>deep</b>.",
                  "Which mineral comes out of the Harrow Shaft?": "Orvalite."},
}




@pytest.fixture
def report_json(isolated_home) -> Path:
    """A real compare report, in the folder a version's reports live in."""
    cands = [Candidate("mining:v1", "v1"), Candidate("mining:v2", "v2", "v1")]
    report = run_compare(cands, QS, TableBackend(ANSWERS, digest="sha256:" + "1" * 64), CompareConfig(concurrency=1), GateConfig(), domain_corpus={},
                         system=None)
    out = isolated_home / "runs" / "mining" / "v2_20250101_120000" / "compare"
    return write_reports(report, out)["json"]


@pytest.fixture
def server(report_json):
    s = ReviewServer(load_review(report_json), port=0).start()
    yield s
    s.stop()


# ---------------------------------------------------------------- the browser


def _browser_or_skip(profile: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'loraship[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,1400"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


@pytest.fixture
def browser(tmp_path):
    b = _browser_or_skip(tmp_path / "chromium-profile")
    yield b
    b.quit()


def test_thumbs_down_with_a_correction_by_keyboard_and_a_thumbs_up_are_saved_as_jsonl(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url)
    assert "Review the answers of mining:v2" in browser.find_element(By.TAG_NAME, "h1").text
    assert "About 200 m <b>deep</b>." in browser.page_source.replace("&lt;", "<").replace("&gt;", ">")
    assert not browser.find_elements(By.CSS_SELECTOR, "b")  # the answer's markup is text, not HTML
    name = browser.find_element(By.ID, "reviewer")
    name.send_keys("Ana Reviewer")
    # keyboard only: Tab into v1's rating group for the first question, then v2's; arrow up from
    # "Not rated" chooses "Wrong"; Tab to its correction box and type the right answer.
    keys = ActionChains(browser)
    keys.send_keys(Keys.TAB, Keys.TAB, Keys.TAB, Keys.ARROW_UP, Keys.TAB)
    keys.send_keys("The Ebbrook Mine is 610 metres deep.").perform()
    assert browser.switch_to.active_element.get_attribute("id") == "c1"
    assert browser.find_element(By.ID, "r1-down").is_selected()
    label = browser.find_element(By.CSS_SELECTOR, "label[for=r3-up]")  # v2's answer to the Harrow question
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", label)  # not under the save bar
    label.click()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").send_keys(Keys.ENTER)
    status = _after_submit(browser, "[role=status]").text
    assert status.startswith("Saved 2 ratings by Ana Reviewer")
    assert browser.find_element(By.ID, "r1-down").is_selected() and browser.find_element(By.ID, "r3-up").is_selected()
    assert browser.find_element(By.ID, "c1").get_attribute("value") == "The Ebbrook Mine is 610 metres deep."

    records = feedback.read_records(server.review.feedback_path)
    by_q = {r["question_id"]: r for r in records}
    assert set(by_q) == {"depth", "harrow"}
    down, up = by_q["depth"], by_q["harrow"]
    assert (down["tag"], down["version"], down["rating"], down["reviewer"]) == ("mining:v2", "v2", "down", "Ana Reviewer")
    assert down["correction"] == "The Ebbrook Mine is 610 metres deep." and down["answer"] == "About 200 m <b>deep</b>."
    assert (up["tag"], up["rating"], up["correction"], up["answer"]) == ("mining:v2", "up", None, "Orvalite.")
    assert down["report"] == "mining/v2_20250101_120000/compare/report.json" and down["time"].endswith("Z")
    assert browser.save_screenshot(str(tmp_path / "review.png"))

    # the records are what `loraship data --feedback` takes: a correction -> a training row
    rows = feedback.read_feedback([server.review.feedback_path], "mining", "v3")
    assert [r["messages"][1]["content"] for r in rows.train] == ["The Ebbrook Mine is 610 metres deep."]
    assert [r["messages"][1]["content"] for r in rows.replay] == ["Orvalite."]


def _after_submit(browser, css: str):
    """The element of the page a submit loads: the POST and its redirect take a moment, longer on a
    loaded machine (seen: the status looked up before the new page was there)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_a_correction_without_thumbs_down_is_shown_again_with_the_reason(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    browser.find_element(By.ID, "reviewer").send_keys("Bo")
    browser.find_element(By.ID, "c0").send_keys("It is 610 metres deep.")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    alert = _after_submit(browser, "[role=alert]").text
    assert "mining:v1's answer to 'How deep is the Ebbrook Mine?'" in alert and "choose thumbs down" in alert
    assert browser.find_element(By.ID, "c0").get_attribute("value") == "It is 610 metres deep."
    assert not server.review.feedback_path.exists()


# ---------------------------------------------------------------- the server without a browser


def _post(url: str, body: bytes, host: str | None = None) -> int:
    req = urllib.request.Request(url + "save", data=body, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_post_without_the_pages_token_or_from_another_host_name_is_refused(server):
    assert _post(server.url, b"reviewer=eve&r0=up") == 403
    token = server.token.encode()
    assert _post(server.url, b"token=" + token + b"&reviewer=eve&r0=up", host=f"evil.example:{server.port}") == 421
    assert not server.review.feedback_path.exists()
    # the same reviewer saving again replaces their ratings; another reviewer's stay
    server.save("ana", {0: ("up", "")})
    server.save("bo", {0: ("down", "")})
    server.save("ana", {1: ("down", "610 metres")})
    recs = feedback.read_records(server.review.feedback_path)
    assert sorted((r["reviewer"], r["question_id"], r["tag"], r["rating"]) for r in recs) == [
        ("ana", "depth", "mining:v2", "down"), ("bo", "depth", "mining:v1", "down")]


def test_a_post_with_a_broken_content_length_is_a_400(server):
    import http.client

    for bad in ("abc", "-1", "1e3"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("POST", "/save")
        conn.putheader("Host", f"127.0.0.1:{server.port}")
        conn.putheader("Content-Length", bad)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 400 and b"Content-Length" in resp.read(), bad
        conn.close()
    assert not server.review.feedback_path.exists()


def test_only_loopback_unless_a_host_is_given_and_bad_reports_are_one_line(report_json, isolated_home):
    review = load_review(report_json.parent)  # the folder works as well as the file
    with pytest.raises(ConfigError, match="refusing to serve the review page on 0.0.0.0"):
        ReviewServer(review, "0.0.0.0", 0)
    s = ReviewServer(review, "0.0.0.0", 0, allow_remote=True)
    s.httpd.server_close()
    bad = isolated_home / "broken"
    bad.mkdir()
    (bad / "report.json").write_text("{}", encoding="utf-8")
    assert "not a loraship compare report" in error_line(cli_run("review", str(bad), code=2))
    assert "no compare report there" in error_line(cli_run("review", str(isolated_home), code=2))
    (report_json.parent / "feedback.jsonl").write_text('{"schema": 1}\n', encoding="utf-8")
    assert "feedback.jsonl:1: not a feedback record" in error_line(cli_run("review", str(report_json), code=2))
