"""Reverie's model and real-time runtime. `engine.Session` is engine.session.Session (imported on first use)."""


def __getattr__(name: str):
    if name == "Session":
        from engine.session import Session

        return Session
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
