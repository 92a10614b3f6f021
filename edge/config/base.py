"""Base model for every config section: unknown keys are errors, values are immutable after load.

A typo in safety configuration (``trip_temp_c`` for ``trip_c``) must stop start-up, not be ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
