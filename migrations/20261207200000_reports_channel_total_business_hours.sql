-- Reports (issue 15): two more pre-summed dimensions of `report_dims`, so that the
-- channels report one row per interval and the business-hours reports are stored reads.
--
-- 'C' (key ''): every row with a channel, summed over the channels (what the channels
-- report one row per interval showed by summing the 'c' rows of each bucket per request).
--
-- 'b' (key: queue id, as 'q'): a queue's rows of the 15-minute buckets inside its
-- business hours (`queues.business_hours`, the calendar routing uses; a queue without a
-- calendar, and rows without a queue, are always open), for all three grains: hours and
-- days are the sums of their in-hours quarters. 'B' (key ''): 'b' summed over the queues.
-- The rollup worker adds to them as it adds to 'q', by the calendars of
-- `report_bh_calendars`, the calendar each queue's 'b' rows were built with. When a
-- queue's calendar changes, the worker's next pass rebuilds that queue's 'b' rows (and
-- 'B') from its 'q' quarters under the new calendar; until then, reports of that queue
-- join the calendar per request as before (core/src/reports/query.rs), so an answer is
-- never of an old calendar.
create table report_bh_calendars (
    queue_id uuid primary key,
    calendar jsonb not null
);

insert into report_dims (grain, bucket, dim, key, offered, answered, answered_in_sl, wait_answered_ms, abandoned, abandoned_short, abandoned_in_sl, abandon_wait_ms, max_wait_ms, voicemail, overflowed, callback, transferred, transferred_in, reopened, offers, ring_no_answer, declined, handled, talk_ms, hold_ms, wrap_ms, holds, inbound_msgs, replies, notes, first_responses, first_response_ms, resolved, resolution_ms, disp_complaint, disp_inquiry, disp_suggestion, disp_other, available_ms, away_ms, busy_ms, wrap_up_state_ms, handling_ms, idle_ms)
select grain, bucket, 'C', '', sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms)
  from report_dims where dim = 'c' group by grain, bucket;

-- No calendar is recorded yet: the 'b' rows start as every queue's rows (always open),
-- and the worker's first pass rebuilds those of the queues that have a calendar.
insert into report_dims (grain, bucket, dim, key, offered, answered, answered_in_sl, wait_answered_ms, abandoned, abandoned_short, abandoned_in_sl, abandon_wait_ms, max_wait_ms, voicemail, overflowed, callback, transferred, transferred_in, reopened, offers, ring_no_answer, declined, handled, talk_ms, hold_ms, wrap_ms, holds, inbound_msgs, replies, notes, first_responses, first_response_ms, resolved, resolution_ms, disp_complaint, disp_inquiry, disp_suggestion, disp_other, available_ms, away_ms, busy_ms, wrap_up_state_ms, handling_ms, idle_ms)
select grain, bucket, case dim when 'q' then 'b'::"char" else 'B'::"char" end, key, offered, answered, answered_in_sl, wait_answered_ms, abandoned, abandoned_short, abandoned_in_sl, abandon_wait_ms, max_wait_ms, voicemail, overflowed, callback, transferred, transferred_in, reopened, offers, ring_no_answer, declined, handled, talk_ms, hold_ms, wrap_ms, holds, inbound_msgs, replies, notes, first_responses, first_response_ms, resolved, resolution_ms, disp_complaint, disp_inquiry, disp_suggestion, disp_other, available_ms, away_ms, busy_ms, wrap_up_state_ms, handling_ms, idle_ms
  from report_dims where dim in ('q', 't');
