-- Reports (issue 15): the rollups keep per-agent rows pre-summed too, so the agents
-- report per agent is a read of stored rows (it summed `report_rows` at request time: 7 s
-- for a year by day of 200 agents). Dimension 'g' of `report_dims`, keyed by the agent id
-- (text), one row per (grain, bucket, agent): the increments of every fact row with that
-- agent and the agent's presence time, the same rows dimension 'a' sums over all agents.
-- The worker upserts them with the other dimensions (core/src/reports/rollup.rs
-- `dims_of`); `switchboard reports rebuild` deletes and replays them with the rest.
-- Existing rollups are summed here once: quarters and days as stored, UTC hours from the
-- quarters (the full rows keep no hours).
insert into report_dims (grain, bucket, dim, key, offered, answered, answered_in_sl, wait_answered_ms, abandoned, abandoned_short, abandoned_in_sl, abandon_wait_ms, max_wait_ms, voicemail, overflowed, callback, transferred, transferred_in, reopened, offers, ring_no_answer, declined, handled, talk_ms, hold_ms, wrap_ms, holds, inbound_msgs, replies, notes, first_responses, first_response_ms, resolved, resolution_ms, disp_complaint, disp_inquiry, disp_suggestion, disp_other, available_ms, away_ms, busy_ms, wrap_up_state_ms, handling_ms, idle_ms)
select grain, bucket, 'g', agent_id::text, sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms)
  from report_rows where agent_id <> '00000000-0000-0000-0000-000000000000' and grain in (0, 2)
 group by grain, bucket, agent_id
union all
select 1, date_trunc('hour', bucket at time zone 'UTC') at time zone 'UTC', 'g', agent_id::text, sum(offered), sum(answered), sum(answered_in_sl), sum(wait_answered_ms), sum(abandoned), sum(abandoned_short), sum(abandoned_in_sl), sum(abandon_wait_ms), max(max_wait_ms), sum(voicemail), sum(overflowed), sum(callback), sum(transferred), sum(transferred_in), sum(reopened), sum(offers), sum(ring_no_answer), sum(declined), sum(handled), sum(talk_ms), sum(hold_ms), sum(wrap_ms), sum(holds), sum(inbound_msgs), sum(replies), sum(notes), sum(first_responses), sum(first_response_ms), sum(resolved), sum(resolution_ms), sum(disp_complaint), sum(disp_inquiry), sum(disp_suggestion), sum(disp_other), sum(available_ms), sum(away_ms), sum(busy_ms), sum(wrap_up_state_ms), sum(handling_ms), sum(idle_ms)
  from report_rows where agent_id <> '00000000-0000-0000-0000-000000000000' and grain = 0
 group by 2, agent_id
on conflict (grain, dim, bucket, key) do nothing;
