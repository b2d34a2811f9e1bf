-- 0015: the patient's ID number and phone encrypted at rest (个人信息保护法, 等保 level 3).
--
-- id_number_enc / phone_enc: AES-256-GCM ciphertexts, `<key id>:<nonce><ciphertext+tag>`
-- (app/security/crypto.py); id_number_idx / phone_idx: HMAC-SHA256 blind indexes of the normalised
-- values under a key of their own, what look-ups by ID number (desk, self-service, HL7) and by phone
-- (the self-service SMS login) match on.
--
-- SQL holds no key, so this migration cannot encrypt the existing rows: the start-up step
-- `patient_repo.protect_pii` (python -m app encrypt-pii) encrypts every row still holding a
-- plaintext id_number / phone and sets those columns to NULL; it is idempotent. The plaintext
-- columns stay (empty) until every reader and writer uses the new ones (the notice relay still reads
-- patient.phone); a later migration drops them, or adds CHECK (id_number IS NULL AND phone IS NULL).
--
-- PostgreSQL-only features (noted for openGauss / KingbaseES): a partial index.

ALTER TABLE patient
    ADD COLUMN id_number_enc bytea,
    ADD COLUMN id_number_idx bytea,
    ADD COLUMN phone_enc     bytea,
    ADD COLUMN phone_idx     bytea,
    ADD CONSTRAINT patient_id_number_enc_idx CHECK ((id_number_enc IS NULL) = (id_number_idx IS NULL)),
    ADD CONSTRAINT patient_phone_enc_idx CHECK ((phone_enc IS NULL) = (phone_idx IS NULL));

-- Not unique: a hospital may hold two records (two MRNs) for one person until they are merged.
CREATE INDEX patient_id_number_idx ON patient (id_number_idx) WHERE id_number_idx IS NOT NULL;
CREATE INDEX patient_phone_idx ON patient (phone_idx) WHERE phone_idx IS NOT NULL;

COMMENT ON COLUMN patient.id_number IS 'legacy plaintext, emptied by encrypt-pii: use id_number_enc / id_number_idx';
COMMENT ON COLUMN patient.phone IS 'legacy plaintext, emptied by encrypt-pii: use phone_enc';
COMMENT ON COLUMN patient.id_number_enc IS 'AES-256-GCM of the normalised ID number (key id prefix)';
COMMENT ON COLUMN patient.id_number_idx IS 'HMAC-SHA256 blind index of the normalised ID number';
COMMENT ON COLUMN patient.phone_enc IS 'AES-256-GCM of the phone number (key id prefix)';
COMMENT ON COLUMN patient.phone_idx IS 'HMAC-SHA256 blind index of the normalised phone number';
