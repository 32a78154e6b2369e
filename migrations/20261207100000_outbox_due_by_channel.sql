-- The outbox claim of a node that cannot deliver every channel now (another node holds the
-- SMPP bind) reads each channel it can deliver in due order, instead of walking past the
-- other channels' due rows (a campaign's backlog) on every claim (core/src/outbox.rs).
create index outbox_due_by_channel on outbox (channel, next_attempt_at) where status in ('pending', 'sending');
