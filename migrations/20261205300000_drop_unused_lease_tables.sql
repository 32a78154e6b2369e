-- The email and SMPP adapters take their single-owner leases in core's `leases` table
-- (`email:<mailbox>`, `smpp:<channel>`, migrations/20261204300000_leases.sql); the
-- per-adapter lease tables they used before are read and written by nothing.
drop table if exists email_leases;
drop table if exists sms_bind_leases;
