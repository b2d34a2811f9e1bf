"""FHIR R4 REST facade (``/fhir/R4``): read and search of Patient, ServiceRequest, Schedule, Slot and
Appointment mapped from the booking platform's own records, and the IHE ITI Scheduling operations
``Appointment/$find``, ``$hold`` and ``$book`` on the same booking path as the rest of the platform.
See docs/fhir.md.

  outcome.py     AppError -> OperationOutcome with its HTTP status; the fhir+json response
  mapping.py     pure: rows -> resources, the status maps, identifier systems, ids of holds and proposals
  search.py      pure: search parameters (dates, references, tokens), Bundles
  repo.py        the SQL the facade reads
  resources.py   read and search per resource type, with the audit of personal data read
  operations.py  $find, $hold, $book
"""
