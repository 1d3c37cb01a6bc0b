"""The HTML report: self-contained, opens offline in headless Chromium, and says what audit.json says."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile

import pytest

from privaudit.reports import verdict_sentence, write_report
from privaudit.reports._document import Document, Figure, Heading, Paragraph
from privaudit.reports._html import render_html
from privaudit.reports._markdown import render_markdown

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   # No network at all: every host name fails to resolve and every proxied request goes nowhere.
                   "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                   "--enable-logging=stderr", "--v=0")


def _chromium() -> str | None:
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(binary: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="privaudit-chromium-")
    proc = subprocess.Popen([binary, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started, nothing else
        proc.communicate()
        raise
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def written(pipeline_run, tmp_path_factory):
    return write_report(pipeline_run[0], tmp_path_factory.mktemp("report"))


def test_page_references_nothing_outside_itself(written):
    _, files = written
    page = files.html.read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert len(sources) == len(files.images)


def test_markdown_twin_has_the_same_sections_and_its_pngs(written):
    _, files = written
    md = files.markdown.read_text(encoding="utf-8")
    page = files.html.read_text(encoding="utf-8")
    md_headings = re.findall(r"^#{2,3} (.+)$", md, flags=re.M)
    html_headings = re.findall(r"<h[23]>([^<]+)</h[23]>", page)
    assert md_headings == html_headings
    assert md_headings[:5] == ["1. The setting", "2. Privacy", "The privacy ledger", "3. Utility",
                               "4. Membership-inference attacks"]
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (files.markdown.parent / name).is_file()


def test_opens_in_headless_chromium_offline(written, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (CI installs one: apt-get install -y chromium)")
    _, files = written
    url = files.html.resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = _run_chromium(binary, "--window-size=1200,3000", f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    assert (pixels.min(axis=2) < 0.5).mean() > 0.01  # text and figures, not a blank page
    assert not re.search(r"Uncaught|Failed to load resource|ERR_NAME_NOT_RESOLVED", result.stderr)
    dom = _run_chromium(binary, "--dump-dom", url)
    assert dom.returncode == 0
    assert "5. Audit" in dom.stdout and dom.stdout.count("<img") == len(files.images)


@pytest.mark.parametrize("verdict", ["PASS", "FAIL"])
def test_verdict_sentence_matches_audit_json(run_copy, verdict):
    audit = json.loads((run_copy / "audit.json").read_text())
    audit["verdict"] = verdict
    if verdict == "FAIL":
        audit["epsilon_lower_bound"] = audit["epsilon_claimed"] + 1.0
    (run_copy / "audit.json").write_text(json.dumps(audit))
    report, files = write_report(run_copy)
    sentence = verdict_sentence(audit)
    assert report.audit.sentence == sentence and sentence.startswith(verdict + ":")
    assert f"ε ≥ {audit['epsilon_lower_bound']:.3f}" in sentence
    assert f"ε = {audit['epsilon_claimed']:.3f}" in sentence
    page = files.html.read_text(encoding="utf-8")
    assert f'<p class="{verdict.lower()}">{verdict}:' in page
    assert ("does not exceed" in sentence) == (verdict == "PASS")
    assert sentence in files.markdown.read_text(encoding="utf-8")


def test_the_pipeline_verdict_is_audit_json_s(pipeline_run):
    run_dir, result, _ = pipeline_run
    audit = json.loads((run_dir / "audit.json").read_text())
    page = (run_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert result.verdict == audit["verdict"]
    assert f'<p class="{audit["verdict"].lower()}">{audit["verdict"]}:' in page


def test_unknown_verdict_is_not_dressed_up():
    assert verdict_sentence({"verdict": "maybe"}).startswith("MAYBE: audit.json holds a verdict")


def test_text_is_escaped():
    doc = Document(title="<script>x</script>", blocks=(Heading("a & b"), Paragraph("1 < 2"),
                                                        Figure("f.png", 'say "hi"')), images={"f.png": b"\x89PNG"})
    page = render_html(doc)
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    assert 'alt="say &quot;hi&quot;"' in page
    assert "![say \"hi\"](f.png)" in render_markdown(doc)
    with pytest.raises(ValueError, match="no image"):
        Document(title="t", blocks=(Figure("missing.png", "x"),), images={})
