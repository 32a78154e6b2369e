-- CRM at a million customers: search indexes that stay fast for rare and common
-- fragments alike, import jobs that survive a restart, and duplicate suggestions kept
-- up to date on write instead of found by grouping whole tables.

-- ---------------------------------------------------------------- search
-- Names are searched through name_key (lower case, runs of white space collapsed), so
-- the query is a plain LIKE and only live customers are indexed.
drop index if exists customers_name_trgm;
create index customers_name_key_trgm on customers using gin (name_key gin_trgm_ops)
    with (gin_pending_list_limit = 256)
    where merged_into is null and erased_at is null;

-- Email addresses and chat ids keep trigrams; phone numbers get their own index below,
-- so the trigram index no longer mixes both (digit trigrams are few and very common).
drop index if exists customer_identities_address_trgm;
create index customer_identities_text_trgm on customer_identities using gin (address gin_trgm_ops)
    with (gin_pending_list_limit = 256)
    where kind in ('email', 'chat');

-- Every 3-, 4- and 5-digit run of a phone number, each encoded as one integer
-- (10^n + value, so runs of different lengths never collide). A fragment of up to five
-- digits is then one exact index key whose posting list holds exactly its matches, and
-- a longer one is the intersection of its 5-digit runs: unlike trigrams (only 1,000 of
-- them, each in a large share of all numbers) the work follows the number of matches.
create function crm_digit_grams(phone text) returns int[]
    language sql immutable strict parallel safe
return (
    select coalesce(array_agg(distinct (10 ^ n)::int + substr(d, i, n)::int), '{}')
    from (select regexp_replace(phone, '[^0-9]', '', 'g') as d) digits,
         generate_series(3, 5) as n,
         generate_series(1, length(d) - n + 1) as i
);
create index customer_identities_phone_grams on customer_identities using gin (crm_digit_grams(address))
    with (gin_pending_list_limit = 256)
    where kind = 'phone';

-- ---------------------------------------------------------------- import jobs
-- The uploaded CSV is kept (in chunks) until its job ends, so a node that finds a job
-- whose worker died resumes it after its last committed batch. Stored uncompressed: it
-- is read once or twice and deleted.
create table crm_import_job_data (
    job_id uuid not null references crm_import_jobs(id) on delete cascade,
    seq int not null,
    data bytea not null,
    primary key (job_id, seq)
);
alter table crm_import_job_data alter column data set storage external;
-- How many times a worker picked the job up again after an interruption.
alter table crm_import_jobs add column resumed int not null default 0;
create index crm_import_jobs_running on crm_import_jobs (created_at) where status = 'running';

-- ---------------------------------------------------------------- duplicates
-- The key two identities share when they are probably the same person's: an email
-- address without dots and `+tag` in its local part, the last ten digits of a phone
-- number (the same national number under two country codes, e.g. +44 20 7946 0958 and
-- +1 207 946 0958 — ten, not nine: with nine, US numbers differing only in the first
-- digit of the area code would look alike).
create function crm_identity_match_key(kind text, address text) returns text
    language sql immutable strict parallel safe
return case kind
    when 'email' then replace(split_part(split_part(address, '@', 1), '+', 1), '.', '') || '@' || split_part(address, '@', 2)
    when 'phone' then case when length(address) >= 11 then right(address, 10) end
end;
create index customer_identities_match_key on customer_identities (crm_identity_match_key(kind, address))
    where kind in ('email', 'phone');

-- One row per key that more than one customer had when it was written: the work list of
-- suggested duplicates, paged by id. Members are looked up through the indexes above
-- when listed; a group whose members were merged or erased is dropped then, unless a
-- write saw it shared again since (seen_at).
create table crm_duplicate_keys (
    id bigint generated always as identity primary key,
    reason text not null check (reason in ('name_birthday', 'email', 'phone')),
    key text not null,
    seen_at timestamptz not null default clock_timestamp(),
    unique (reason, key)
);

-- The checks probe the indexes once per written row (a scalar subquery with LIMIT cannot
-- become a hash join over the whole table), and without JIT (an import batch of
-- thousands of rows would otherwise pay for compiling every statement).
create function crm_note_identity_duplicates() returns trigger
    language plpgsql set jit = off as $$
begin
    insert into crm_duplicate_keys (reason, key)
    select distinct n.kind, n.key
    from (select kind, customer_id, crm_identity_match_key(kind, address) as key
          from new_identities where kind in ('email', 'phone')) n
    where n.key is not null
      and (select true from customer_identities o
           where o.kind in ('email', 'phone') and o.kind = n.kind
             and crm_identity_match_key(o.kind, o.address) = n.key and o.customer_id <> n.customer_id
           limit 1)
    order by 1, 2
    on conflict (reason, key) do update set seen_at = excluded.seen_at;
    return null;
end $$;
create trigger customer_identities_note_duplicates_insert after insert on customer_identities
    referencing new table as new_identities for each statement execute function crm_note_identity_duplicates();
create trigger customer_identities_note_duplicates_update after update on customer_identities
    referencing new table as new_identities for each statement execute function crm_note_identity_duplicates();

create function crm_note_customer_duplicates() returns trigger
    language plpgsql set jit = off as $$
begin
    insert into crm_duplicate_keys (reason, key)
    select distinct 'name_birthday', n.name_key || ' ' || n.birthday::text
    from new_customers n
    where n.birthday is not null and n.name_key <> '' and n.merged_into is null and n.erased_at is null
      and (select true from customers o
           where o.name_key = n.name_key and o.birthday = n.birthday and o.id <> n.id
             and o.birthday is not null and o.merged_into is null and o.erased_at is null
           limit 1)
    order by 1, 2
    on conflict (reason, key) do update set seen_at = excluded.seen_at;
    return null;
end $$;
create trigger customers_note_duplicates_insert after insert on customers
    referencing new table as new_customers for each statement execute function crm_note_customer_duplicates();
create trigger customers_note_duplicates_update after update on customers
    referencing new table as new_customers for each statement execute function crm_note_customer_duplicates();

-- What already exists.
insert into crm_duplicate_keys (reason, key)
select 'name_birthday', name_key || ' ' || birthday::text from customers
where birthday is not null and name_key <> '' and merged_into is null and erased_at is null
group by name_key, birthday having count(*) > 1
order by 2;
insert into crm_duplicate_keys (reason, key)
select kind, crm_identity_match_key(kind, address) from customer_identities
where kind in ('email', 'phone') and crm_identity_match_key(kind, address) is not null
group by 1, 2 having count(distinct customer_id) > 1
order by 1, 2;
