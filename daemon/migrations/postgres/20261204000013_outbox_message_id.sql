-- The answer page offers the 様式 exactly as it was mailed: found by the request's Message-ID.
CREATE INDEX outbox_by_message_id ON outbox (message_id);
