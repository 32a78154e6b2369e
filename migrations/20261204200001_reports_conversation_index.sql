-- The rollup worker asks, for every new contact, whether an earlier interaction of the
-- same conversation exists (a reopened conversation, docs/metrics.md). The only index on
-- conversation_key is partial (open interactions), so that probe scanned every earlier
-- interaction through interactions_created: one batch of 3,000 new contacts took ~60 s
-- over 100,000 interactions and grew with the table. This index makes it a lookup.
create index interactions_conversation on interactions(channel, conversation_key, created_at)
    where conversation_key is not null;
