-- Every offer of an interaction, whatever its state: the visibility checks ("was this
-- agent ever offered it?") and the cascade when an interaction is deleted. The partial
-- unique indexes only cover live offers.
create index offers_interaction on offers (interaction_id, agent_id);
