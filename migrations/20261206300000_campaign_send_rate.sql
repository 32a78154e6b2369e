-- Campaign send rate (issue 14): fewer index entries and row versions per message.
--
-- campaign_recipients_due (due_at) is covered by campaign_recipients_campaign_due
-- (campaign_id, due_at): every claim names its campaign. campaign_recipients_outbox was
-- read by no query (reconcile joins recipient → outbox, not the other way). Each cost an
-- index entry per planned or handed-over recipient.
drop index if exists campaign_recipients_due;
drop index if exists campaign_recipients_outbox;

-- sms_sent is written twice per message (`submitting`, then the accepted parts); the
-- second write touches no indexed column, so with room left on the page it is a HOT update
-- (no new index entries). New pages keep 20 % free for it.
alter table sms_sent set (fillfactor = 80);
