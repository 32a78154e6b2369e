-- Reports, faster rollups (issue 15): the worker's rollup rows become append-only
-- increments, and each increment is also summed per report dimension.
--
-- Before, every batch upserted its increments into `report_facts` and `report_counts`
-- (`on conflict … do update`): an index probe and a new row version per row touched, of
-- 45 columns. The reports only ever sum the rows of a bucket (and take the greatest
-- `max_wait_ms`), so several rows of one key give the same figures as one: the worker now
-- appends one row per key and batch (the batch already folds its events in memory), which
-- is a plain insert with one small index entry. The rebuild deletes a range's rows and
-- appends them again, as before. Exactly once is kept by the watermark written in the
-- same transaction, not by the key.
alter table report_facts drop constraint report_facts_pkey;
create index report_facts_bucket on report_facts (grain, bucket);
alter table report_counts drop constraint report_counts_pkey;
create index report_counts_bucket on report_counts (grain, bucket);

-- The same increments summed per dimension, so a report without cross filters reads a few
-- rows per bucket instead of every (queue, agent, channel) row: dim 'q' per queue (key:
-- queue id, the nil uuid for none), 'c' per channel (key: channel; rows without one are
-- left out), 'a' every row with an agent (key ''), 't' every row (key ''). Appended by the
-- worker in the same transaction as `report_facts`.
create table report_dims (
    grain smallint not null,
    bucket timestamptz not null,
    dim "char" not null,
    key text not null,
    offered bigint not null default 0,
    answered bigint not null default 0,
    answered_in_sl bigint not null default 0,
    wait_answered_ms bigint not null default 0,
    abandoned bigint not null default 0,
    abandoned_short bigint not null default 0,
    abandoned_in_sl bigint not null default 0,
    abandon_wait_ms bigint not null default 0,
    max_wait_ms bigint not null default 0,
    voicemail bigint not null default 0,
    overflowed bigint not null default 0,
    callback bigint not null default 0,
    transferred bigint not null default 0,
    transferred_in bigint not null default 0,
    reopened bigint not null default 0,
    offers bigint not null default 0,
    ring_no_answer bigint not null default 0,
    declined bigint not null default 0,
    handled bigint not null default 0,
    talk_ms bigint not null default 0,
    hold_ms bigint not null default 0,
    wrap_ms bigint not null default 0,
    holds bigint not null default 0,
    inbound_msgs bigint not null default 0,
    replies bigint not null default 0,
    notes bigint not null default 0,
    first_responses bigint not null default 0,
    first_response_ms bigint not null default 0,
    resolved bigint not null default 0,
    resolution_ms bigint not null default 0,
    disp_complaint bigint not null default 0,
    disp_inquiry bigint not null default 0,
    disp_suggestion bigint not null default 0,
    disp_other bigint not null default 0,
    available_ms bigint not null default 0,
    away_ms bigint not null default 0,
    busy_ms bigint not null default 0,
    wrap_up_state_ms bigint not null default 0,
    handling_ms bigint not null default 0,
    idle_ms bigint not null default 0
);
create index report_dims_bucket on report_dims (grain, dim, bucket);

insert into report_dims (grain, bucket, dim, key, offered, answered, answered_in_sl, wait_answered_ms, abandoned, abandoned_short, abandoned_in_sl, abandon_wait_ms, max_wait_ms, voicemail, overflowed, callback, transferred, transferred_in, reopened, offers, ring_no_answer, declined, handled, talk_ms, hold_ms, wrap_ms, holds, inbound_msgs, replies, notes, first_responses, first_response_ms, resolved, resolution_ms, disp_complaint, disp_inquiry, disp_suggestion, disp_other, available_ms, away_ms, busy_ms, wrap_up_state_ms, handling_ms, idle_ms)
select grain, bucket, 'q', queue_id::text, sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms) from report_facts group by grain, bucket, queue_id
union all
select grain, bucket, 'c', channel, sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms) from report_facts where channel <> '' group by grain, bucket, channel
union all
select grain, bucket, 'a', '', sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms) from report_facts where agent_id <> '00000000-0000-0000-0000-000000000000' group by grain, bucket
union all
select grain, bucket, 't', '', sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms) from report_facts group by grain, bucket;

-- Agents' time in presence states, split over the buckets it spans, was most of the rows
-- (an 8-hour shift is 32 quarters, 8 hours and a day, per agent and day) at 45 columns
-- each: it gets its own narrow table. `report_rows` reads both as the fact rows they were.
create table report_presence (
    grain smallint not null,
    bucket timestamptz not null,
    agent_id uuid not null,
    available_ms bigint not null default 0,
    away_ms bigint not null default 0,
    busy_ms bigint not null default 0,
    wrap_up_state_ms bigint not null default 0,
    handling_ms bigint not null default 0,
    idle_ms bigint not null default 0
);
create index report_presence_bucket on report_presence (grain, bucket);

create view report_rows as
select * from report_facts
union all
select grain, bucket, '00000000-0000-0000-0000-000000000000'::uuid as queue_id, agent_id, ''::text as channel,
       0::int8 as offered,
       0::int8 as answered,
       0::int8 as answered_in_sl,
       0::int8 as wait_answered_ms,
       0::int8 as abandoned,
       0::int8 as abandoned_short,
       0::int8 as abandoned_in_sl,
       0::int8 as abandon_wait_ms,
       0::int8 as max_wait_ms,
       0::int8 as voicemail,
       0::int8 as overflowed,
       0::int8 as callback,
       0::int8 as transferred,
       0::int8 as transferred_in,
       0::int8 as reopened,
       0::int8 as offers,
       0::int8 as ring_no_answer,
       0::int8 as declined,
       0::int8 as handled,
       0::int8 as talk_ms,
       0::int8 as hold_ms,
       0::int8 as wrap_ms,
       0::int8 as holds,
       0::int8 as inbound_msgs,
       0::int8 as replies,
       0::int8 as notes,
       0::int8 as first_responses,
       0::int8 as first_response_ms,
       0::int8 as resolved,
       0::int8 as resolution_ms,
       0::int8 as disp_complaint,
       0::int8 as disp_inquiry,
       0::int8 as disp_suggestion,
       0::int8 as disp_other,
       available_ms,
       away_ms,
       busy_ms,
       wrap_up_state_ms,
       handling_ms,
       idle_ms
  from report_presence;

-- Hours are kept pre-summed in `report_dims` only; reports that need the full rows read
-- quarters for them (four rows an hour instead of one). Existing hourly rows are in
-- `report_dims` now (above).
delete from report_facts where grain = 1;
