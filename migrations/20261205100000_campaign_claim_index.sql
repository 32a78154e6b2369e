-- A campaign's due recipients, by campaign first: the claim of one campaign no longer
-- walks the due rows of every other campaign (a large cancelled or paused campaign's
-- planned rows stood in front of every claim of a running one).
create index campaign_recipients_campaign_due on campaign_recipients(campaign_id, due_at) where status in ('planned','deferred');
