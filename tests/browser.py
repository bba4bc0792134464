"""A real headless Chromium (Debian's chromium + chromium-driver, through Selenium) that opens a page and reports
what a reader would see broken: images that did not load, links that lead nowhere, and anything wider than the
window (a horizontal scrollbar on the page or in any of its boxes).

Where Chromium is not installed the tests that use it skip with the reason, unless MAXACT_REQUIRE_BROWSER=1 (CI
installs it: .ci/browser.sh), which makes them fail instead.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

WIDTH, HEIGHT = 1400, 1000


def chromium_problem() -> str | None:
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install chromium chromium-driver, or .ci/browser.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (./install.sh --test)"
    return None


def require_chromium() -> None:
    problem = chromium_problem()
    if problem:
        if os.environ.get("MAXACT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MAXACT_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)


@dataclass
class PageCheck:
    url: str
    title: str = ""
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    links: int = 0
    broken_links: list[str] = field(default_factory=list)
    overflow: list[str] = field(default_factory=list)
    text: str = ""

    def problems(self) -> list[str]:
        return ([f"broken image: {s}" for s in self.broken_images] + [f"broken link: {s}" for s in self.broken_links]
                + [f"wider than the {WIDTH}px window: {s}" for s in self.overflow])


_IMAGES = """
const done = arguments[arguments.length - 1];
const imgs = [...document.images];
Promise.all(imgs.map(i => (i.complete ? Promise.resolve() : new Promise(r => { i.onload = i.onerror = r; }))))
  .then(() => done(imgs.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])));
"""
_LINKS = "return [...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), a.href]);"
# The page itself, and every element whose content is wider than its box (a scrollbar the reader must use).
_OVERFLOW = """
const out = [];
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth) out.push(`the page (${root.scrollWidth}px)`);
for (const e of document.querySelectorAll('body *')) {
  const s = getComputedStyle(e);
  if ((s.overflowX === 'auto' || s.overflowX === 'scroll') && e.scrollWidth > e.clientWidth + 1)
    out.push(`${e.tagName.toLowerCase()}.${e.className} holding "${(e.innerText || '').slice(0, 60).replace(/\\s+/g, ' ')}" (${e.scrollWidth}px in ${e.clientWidth}px)`);
}
return out;
"""


def check_page(path: Path) -> PageCheck:
    """Open ``path`` in headless Chromium at 1400 px and check its images, links and width."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}",
              "--allow-file-access-from-files"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        driver.set_page_load_timeout(60)
        url = Path(path).resolve().as_uri()
        driver.get(url)
        check = PageCheck(url=url, title=driver.title)
        driver.set_script_timeout(60)
        images = driver.execute_async_script(_IMAGES)
        check.images = len(images)
        check.broken_images = [src for src, ok in images if not ok]
        links = driver.execute_script(_LINKS)
        check.links = len(links)
        ids = set(driver.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id);"))
        for raw, absolute in links:
            if raw.startswith("#"):
                if raw[1:] not in ids:
                    check.broken_links.append(f"{raw} (no element with that id)")
                continue
            u = urlparse(absolute)
            if u.scheme == "file":
                if not Path(unquote(u.path)).exists():
                    check.broken_links.append(f"{raw} -> {unquote(u.path)} (no such file)")
            elif u.scheme not in ("data", "mailto"):
                check.broken_links.append(f"{raw} (leaves the report: {u.scheme})")
        check.overflow = driver.execute_script(_OVERFLOW)
        check.text = driver.execute_script("return document.body.innerText;")
        return check
    finally:
        driver.quit()


def markdown_links(md_path: Path) -> list[str]:
    """Relative links of a Markdown file that lead nowhere (resolved from the file's own folder)."""
    import re

    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", md_path.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (md_path.parent / unquote(target)).exists():
            bad.append(target)
    return bad
