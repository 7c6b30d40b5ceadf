"""The alerts page as a browser gets it: firing, pending, history, silences; the silence form
and Expire buttons for those who may silence (operators, admins), none for a viewer.

The monitor is the real one (collector and alerting built from the config, not started), so
silences go through the real store; the alerts that fire and the history are set on it as an
evaluator would have left them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.fleet.records import AlertHistoryRecord, AlertRecord
from piman.monitor.service import build as build_monitor
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.support import grant

Rig = tuple[httpx.AsyncClient, dict[str, dict[str, str]], AppContext]


def alert(rule: str, node: str, state: str) -> AlertRecord:
    return AlertRecord(
        fingerprint=f"{rule}-{node}",
        rule=rule,
        labels={"node": node, "severity": "critical"},
        annotations={"summary": f"{node} <b>is</b> down"},
        state=state,
        active_at=1.7e9,
        fired_at=1.7e9 + 60 if state == "firing" else None,
        resolved_at=None,
        value=0.0,
        late=False,
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "nodes": [{"name": "pi1"}, {"name": "pi2"}],
            "monitoring": {"rules": [{"alert": "NodeDown", "expr": "up == 0", "for": "1m"}]},
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    built = build_monitor(ctx)
    assert built is not None
    ctx.monitor = built.handle
    alerting = ctx.monitor.alerting
    assert alerting is not None
    firing = [alert("NodeDown", "pi1", "firing"), alert("NodeDown", "pi2", "pending")]
    past = [AlertHistoryRecord(1.7e9 + 60, "NodeDown-pi1", "NodeDown", {"node": "pi1"},
                               "firing", 0.0, False)]  # fmt: skip

    async def history(limit: int) -> list[AlertHistoryRecord]:
        return past[:limit]

    alerting.active = lambda: firing  # type: ignore[method-assign]
    alerting.history = history  # type: ignore[method-assign]
    headers = {role: await grant(ctx, role) for role in ("user", "viewer", "operator")}
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            yield client, headers, ctx
    finally:
        await store.close()


async def test_a_viewer_sees_firing_pending_history_and_silences_without_buttons(
    rig: Rig,
) -> None:
    client, h, _ = rig
    made = await client.post(
        "/api/v1/silences",
        json={"matchers": "node=pi1", "duration": "1h", "comment": "maintenance"},
        headers=h["operator"],
    )
    assert made.status_code == 201, made.text
    page = await client.get("/alerts", headers=h["viewer"])
    assert page.status_code == 200
    html = page.text
    firing = re.search(r'<table id="firing">.*?</table>', html, re.S)
    pending = re.search(r'<table id="pending">.*?</table>', html, re.S)
    assert firing is not None
    assert pending is not None
    assert ">pi1</a>" in firing.group(0)
    assert ">pi2</a>" in pending.group(0)
    assert made.json()["id"][:8] in firing.group(0)  # pi1's alert is silenced, and by which
    assert "&lt;b&gt;is&lt;/b&gt;" in html  # an annotation is text, never markup
    assert "maintenance" in html
    assert re.search(r'<table id="alert-history">.*firing', html, re.S)
    assert 'id="silence-form"' not in html
    assert 'class="silence-expire"' not in html
    assert "silence-this" not in html


async def test_an_operator_gets_the_form_and_expires_a_silence_the_page_then_shows(
    rig: Rig,
) -> None:
    client, h, _ = rig
    made = await client.post(
        "/api/v1/silences", json={"matchers": "alertname=NodeDown", "duration": "2h"},
        headers=h["operator"],
    )  # fmt: skip
    ident = made.json()["id"]
    html = (await client.get("/alerts", headers=h["operator"])).text
    assert 'id="silence-form"' in html
    assert f'class="silence-expire" data-id="{ident}"' in html
    assert 'data-alertname="NodeDown" data-for-node="pi1"' in html
    gone = await client.delete(f"/api/v1/silences/{ident}", headers=h["operator"])
    assert gone.status_code == 200
    parts = (await client.get("/ui/alert-list", headers=h["operator"])).text
    row = re.search(rf'<tr data-silence="{ident}".*?</tr>', parts, re.S)
    assert row is not None
    assert "expired" in row.group(0)
    assert "<button" not in row.group(0)  # nothing left to expire
    assert "<html" not in parts


async def test_a_user_is_refused_the_alerts_page(rig: Rig) -> None:
    client, h, _ = rig
    assert (await client.get("/alerts", headers=h["user"])).status_code == 403
    assert (await client.get("/ui/alert-list", headers=h["user"])).status_code == 403
    anonymous = await client.get("/alerts", follow_redirects=False)
    assert anonymous.status_code == 303
