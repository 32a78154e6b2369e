-- Phone registrations shared across hub nodes: the binding itself (the Contact URI and the
-- address and transport the REGISTER came from), so a node holding a call can ring a phone
-- that registered with another node directly (adapters/voice: HubCredentials).
alter table voice_registrations
    add column contact text,
    add column peer text,
    add column transport text;
