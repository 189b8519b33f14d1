"""A screenshot of the lmrec_retrain trigger form, with its Params, from the cluster's web UI.

Headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol on a
pipe (``--remote-debugging-pipe``: no port, no client library): it gets the Airflow admin's
JWT as the UI's ``_token`` cookie (what the login form sets), opens the DAG's page, clicks
*Trigger* and captures the dialog. Airflow 3's UI is a React app with no URL of its own for
the form, hence the click. Standard library only; no test depends on it.

    python cluster/screenshot.py [--home .cluster] [--out docs/airflow-trigger-form.png]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from airflow_api import AirflowAPI  # noqa: E402

REPO = HERE.parent
DAG = "lmrec_retrain"
WIDTH, HEIGHT = 1280, 1800
TIMEOUT_S = 90


class DevTools:
    """The DevTools protocol over Chromium's pipe (fd 3 in, fd 4 out, NUL-terminated)."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: its pipe ends as fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        cmd = [
            chromium, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
            "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(  # pass_fds: 3 and 4 survive the fd closing after fds()
            cmd, preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _until(tools: DevTools, session: str, expression: str, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = tools.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if found.get("result", {}).get("value"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the UI never showed {what} within {TIMEOUT_S} s")


#: the DAG page's Trigger button (the UI's own, by its text), clicked once it is there
CLICK_TRIGGER = """(() => {
  const button = [...document.querySelectorAll('button')]
    .find(b => b.textContent.trim() === 'Trigger');
  if (!button) return false;
  button.click();
  return true;
})()"""
#: the trigger dialog (the page has other dialogs), once it shows the Params' own fields
DIALOG = """[...document.querySelectorAll('[role=dialog]')]
  .find(d => d.textContent.includes('Trigger Dag') && d.textContent.includes('workdirs'))"""
FORM_SHOWN = f"!!({DIALOG})"
#: where the dialog is on the page, and its full height (its body may scroll)
DIALOG_BOX = f"""(() => {{
  const box = ({DIALOG}).getBoundingClientRect();
  return {{x: box.x, y: box.y, width: box.width, height: ({DIALOG}).scrollHeight}};
}})()"""
MARGIN = 16


def _metrics(tools: DevTools, session: str, height: int) -> None:
    tools.call(
        "Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=height,
        deviceScaleFactor=1, mobile=False,
    )  # fmt: skip


def _open_form(tools: DevTools, base: str, token: str) -> str:
    """Open the DAG's page logged in (the UI's ``_token`` cookie), click *Trigger* and
    wait for the form; the page's DevTools session."""
    targets = tools.call("Target.getTargets")["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    session = tools.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
    session = session["sessionId"]
    tools.call("Network.enable", session)
    tools.call("Network.setCookie", session, name="_token", value=token, url=base)
    _metrics(tools, session, HEIGHT)
    tools.call("Page.navigate", session, url=f"{base}/dags/{DAG}")
    _until(tools, session, CLICK_TRIGGER, "the DAG page's Trigger button")
    _until(tools, session, FORM_SHOWN, "the trigger form with the DAG's Params")
    time.sleep(2)  # the fields settle (fonts, the JSON editor of `overrides`)
    return session


def _capture(tools: DevTools, session: str) -> bytes:
    """A PNG of the whole dialog (the viewport grown to hold it first)."""
    box = tools.call("Runtime.evaluate", session, expression=DIALOG_BOX, returnByValue=True)
    box = box["result"]["value"]
    _metrics(tools, session, max(HEIGHT, int(box["y"] + box["height"]) + 2 * MARGIN))
    time.sleep(1)
    clip = {
        "x": max(0, box["x"] - MARGIN),
        "y": max(0, box["y"] - MARGIN),
        "width": box["width"] + 2 * MARGIN,
        "height": box["height"] + 2 * MARGIN,
        "scale": 1,
    }
    shot = tools.call("Page.captureScreenshot", session, format="png", clip=clip)
    return base64.b64decode(shot["data"])


def screenshot(home: Path, out: Path, chromium: str) -> Path:
    """Capture the trigger form of the cluster in ``home`` into ``out`` (a PNG)."""
    state = json.loads((home / "cluster.json").read_text())
    base = state["urls"]["airflow"]
    api = AirflowAPI(base, "admin", state["password"])
    api.wait_for_dag(DAG)
    with tempfile.TemporaryDirectory(prefix="lmrec-chromium-") as profile:
        tools = DevTools(chromium, Path(profile))
        try:
            png = _capture(tools, _open_form(tools, base, api.token))
        finally:
            tools.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / ".cluster")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "airflow-trigger-form.png")
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    args = parser.parse_args(argv)
    if not args.chromium:
        print("screenshot: no chromium: `apt-get install chromium` (Debian)", file=sys.stderr)
        return 1
    print(f"wrote {screenshot(args.home, args.out, args.chromium)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
