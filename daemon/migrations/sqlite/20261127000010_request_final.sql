-- Set when a request's step finishes (its output is final). From then on nothing sent to the
-- request counts: an answer that loses the race with the step's end is kept as `after_close`,
-- never accepted without appearing in the output.
ALTER TABLE requests ADD COLUMN final_at BIGINT;
