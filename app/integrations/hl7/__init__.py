"""HL7 v2: messages in (orders, ADT) and out (SIU scheduling), over MLLP."""
