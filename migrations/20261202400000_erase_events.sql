-- Erasure (GDPR art. 17) must also take personal data out of interaction event payloads
-- (e.g. the path of a deleted call recording), while the events themselves stay for
-- reports. Events stay append-only for everything else: an update runs only inside a
-- transaction that has set `switchboard.erasing` (the CRM's erase does, transaction-local).
create or replace rule interaction_events_no_update as on update to interaction_events
    where coalesce(current_setting('switchboard.erasing', true), '') <> 'on' do instead nothing;
