-- The agents' SIP digest credentials as the SIP edge (Kamailio auth_db) reads them, so a
-- registrar in front of the hub nodes authenticates phones with the hub's own secrets:
-- username = agents.sip_user, domain = the digest realm the HA1 was made for (auth_db
-- with use_domain = 1 matches it against the realm of the challenge), ha1 =
-- MD5(sip_user:realm:password) (auth_db calculate_ha1 = 0). Read-only; a changed
-- password or SIP user is seen at the next REGISTER. Agents without a SIP user have no row.
create view sip_subscribers as
select a.sip_user as username, c.realm as domain, c.ha1
  from sip_credentials c
  join agents a on a.id = c.agent_id
 where a.sip_user is not null and a.sip_user <> '';
