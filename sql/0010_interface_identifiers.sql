-- 0010: identifiers the hospital's other systems key on (HL7, DICOM, FHIR).
--
-- An order gets its accession number and Study Instance UID when it is first booked; they stay the
-- same when the appointment is moved (and when it is booked again after a cancel or a no-show), so
-- the modality, the PACS and the RIS always see one requested procedure.
ALTER TABLE exam_order ADD COLUMN accession_no text UNIQUE;
ALTER TABLE exam_order ADD COLUMN study_uid text UNIQUE;

-- A DICOM UID under the 2.25 root (ITU-T X.667): the decimal form of a random UUID (at most 44 characters).
CREATE FUNCTION hy_new_uid() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    h text := replace(gen_random_uuid()::text, '-', '');
    n numeric := 0;
    i int;
BEGIN
    FOR i IN 0..3 LOOP
        n := n * 4294967296 + ('x' || substr(h, i * 8 + 1, 8))::bit(32)::bigint;
    END LOOP;
    RETURN '2.25.' || n::text;
END;
$$;

CREATE FUNCTION hy_assign_identifiers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'ordered' AND NEW.accession_no IS NULL THEN
        NEW.accession_no := 'HY' || lpad(NEW.id::text, 10, '0');
        NEW.study_uid := hy_new_uid();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER exam_order_identifiers BEFORE UPDATE OF status ON exam_order
    FOR EACH ROW EXECUTE FUNCTION hy_assign_identifiers();

-- The DICOM AE title of a modality (its Scheduled Station AE Title on the worklist).
ALTER TABLE resource ADD COLUMN ae_title text UNIQUE CHECK (ae_title ~ '^[A-Z0-9_]{1,16}$');
