"""What a route may ask for: the context and the handles of the capabilities that run.

Routes declare ``ctx: Ctx`` or ``power: Power`` …; FastAPI resolves them from the app's
:class:`~piman.context.AppContext` (set once by :func:`piman.web.app.create_app`). A handle
whose capability is off answers 503, with a line that says what to turn on.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from piman.context import AlertingHandle, AppContext, MonitorHandle, PowerHandle

__all__ = ["Alerting", "Ctx", "Monitor", "Power", "get_ctx"]


def get_ctx(request: Request) -> AppContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, AppContext)
    return ctx


def _power(ctx: Annotated[AppContext, Depends(get_ctx)]) -> PowerHandle:
    if ctx.power is None:
        raise HTTPException(503, "power is not configured on this manager (no switch drivers)")
    return ctx.power


def _monitor(ctx: Annotated[AppContext, Depends(get_ctx)]) -> MonitorHandle:
    if ctx.monitor is None:
        raise HTTPException(503, "monitoring is not running on this manager")
    return ctx.monitor


def _alerting(monitor: Annotated[MonitorHandle, Depends(_monitor)]) -> AlertingHandle:
    if monitor.alerting is None:
        raise HTTPException(503, "alerting is not running on this manager")
    return monitor.alerting


Ctx = Annotated[AppContext, Depends(get_ctx)]
Power = Annotated[PowerHandle, Depends(_power)]
Monitor = Annotated[MonitorHandle, Depends(_monitor)]
Alerting = Annotated[AlertingHandle, Depends(_alerting)]
