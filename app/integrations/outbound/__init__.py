"""Outbound interfaces: the appointment and order events of the outbox delivered to HL7 peers (SIU
over MLLP) and webhook subscribers, per destination, in order per exam order, with retries.
`settings.py` (imported by app/settings.py, so it imports nothing of the app's I/O), `relay.py`
(`deliver_outbound`, `run_outbound`). See docs/outbound.md."""
