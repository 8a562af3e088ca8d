-- Sender authentication of replies: the verdict on each inbound message, and answers held
-- for the addressee's confirmation (matched by subject tag and sender only, the sender not
-- authenticated). confirm_hash is the SHA-256 of the token in the confirmation link.
ALTER TABLE inbound ADD COLUMN auth TEXT;
ALTER TABLE inbound ADD COLUMN confirm_hash TEXT;
ALTER TABLE inbound ADD COLUMN confirmed_at BIGINT;
CREATE UNIQUE INDEX inbound_by_confirm ON inbound (confirm_hash) WHERE confirm_hash IS NOT NULL;
CREATE INDEX inbound_held ON inbound (token, from_addr) WHERE status = 'held';
