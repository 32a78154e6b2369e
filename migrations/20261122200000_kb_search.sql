-- Knowledge base search speed (PostgreSQL backend). A search ranks every matching
-- document, so it reads each match's tsvector; the body text it needs only for the page of
-- hits it shows. By default both columns are TOASTed out of line once a row passes ~2 kB,
-- so ranking 2,000 matches meant 2,000 TOAST fetches, and the planner, which does not
-- count them, preferred a sequential scan that detoasted every row. Keep the tsvector in
-- the heap row ("main": compressed inline, moved out only if the row would not fit a page)
-- and push the body out of line ("external"), so the candidate scan stays on short rows.
alter table kb_search_docs
    alter column tsv set storage main,
    alter column body_text set storage external;

-- Storage settings apply to rows as they are written: rewrite the existing ones (the
-- trigger recomputes the same tsvector, which is then stored the new way).
update kb_search_docs set title = title;

-- Titles that look like `words` (pg_trgm word similarity at least `threshold`) of
-- documents without any `excluded` term, for the misspelling fallback, with the columns
-- the search filters on (no join back needed).
-- Only the `<%` operator uses the trigram index, and it reads its threshold from a
-- setting; setting it here, for this query only, makes the fallback one statement
-- instead of a transaction around set_config and the search.
create function kb_similar_titles(words text, threshold real, excluded tsquery)
returns table (article_id uuid, similarity real, updated_at timestamptz, status text, public boolean, category text,
               locale text, tags text[])
language plpgsql volatile as $$
#variable_conflict use_column
declare
    previous text := current_setting('pg_trgm.word_similarity_threshold', true);
begin
    perform set_config('pg_trgm.word_similarity_threshold', threshold::text, true);
    return query
        select d.article_id, word_similarity(words, d.title), d.updated_at, d.status, d.public, d.category, d.locale, d.tags
        from kb_search_docs d
        where words <% d.title and not coalesce(d.tsv @@ excluded, false);
    -- Back to what it was, should the caller be inside a longer transaction.
    perform set_config('pg_trgm.word_similarity_threshold', coalesce(previous, '0.6'), true);
end
$$;
