"""Settings of the DICOM role (read by app/settings.py from the environment, like every setting)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class DicomSettings(msgspec.Struct, frozen=True):
    ae_title: str = "HUIYUE"  # our called AE title: associations addressed to another are refused
    host: str = "127.0.0.1"
    port: int = 11112
    # Only the AE titles of the hospital's resources (resource.ae_title) may associate.
    known_callers_only: bool = False
    # How long one DIMSE request may wait for PostgreSQL / Redis before it is answered with a failure.
    request_timeout_s: float = 20.0
    # Most worklist entries one query returns (a query with no keys would otherwise read them all).
    max_results: int = 2000


def dicom_settings(env: Mapping[str, str]) -> DicomSettings:
    def number(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None

    ae = env.get("HY_DICOM_AE") or "HUIYUE"
    if not 0 < len(ae) <= 16 or "\\" in ae:
        raise ValueError(f"HY_DICOM_AE must be 1 to 16 characters without a backslash, got {ae!r}")
    return DicomSettings(
        ae_title=ae,
        host=env.get("HY_DICOM_HOST") or "127.0.0.1",
        port=number("HY_DICOM_PORT", 11112),
        known_callers_only=(env.get("HY_DICOM_KNOWN_CALLERS_ONLY", "").lower() in ("1", "true", "yes")),
        request_timeout_s=float(env.get("HY_DICOM_TIMEOUT_S") or 20.0),
        max_results=number("HY_DICOM_MAX_RESULTS", 2000),
    )
