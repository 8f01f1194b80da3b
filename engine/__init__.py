"""Reverie's model and real-time runtime. Never imports play/, train/ or export/."""
