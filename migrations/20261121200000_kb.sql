-- Knowledge base: articles with version history and attachments, the search outbox that
-- feeds the search backend, and the PostgreSQL full-text search index (embedded backend).

create extension if not exists pg_trgm;

-- Text search configuration for an article locale (en-US → english, …, else simple).
create or replace function kb_ts_config(locale text) returns regconfig
language sql immutable parallel safe as $$
    select case lower(split_part(split_part(coalesce(locale, ''), '-', 1), '_', 1))
        when 'en' then 'english'::regconfig
        when 'es' then 'spanish'::regconfig
        when 'de' then 'german'::regconfig
        when 'fr' then 'french'::regconfig
        else 'simple'::regconfig
    end
$$;

create table kb_articles (
    id uuid primary key default gen_random_uuid(),
    title text not null check (length(title) between 1 and 300),
    body text not null default '',
    category text not null default '' check (length(category) <= 100),
    tags text[] not null default '{}',
    locale text not null default 'en' check (length(locale) between 2 and 20),
    status text not null default 'draft' check (status in ('draft', 'published', 'archived')),
    public boolean not null default false,
    version integer not null default 1,
    created_by uuid references users(id) on delete set null,
    updated_by uuid references users(id) on delete set null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    published_at timestamptz
);
create index kb_articles_status on kb_articles(status, updated_at desc);

create table kb_article_versions (
    article_id uuid not null references kb_articles(id) on delete cascade,
    version integer not null,
    title text not null,
    body text not null,
    category text not null,
    tags text[] not null,
    locale text not null,
    status text not null,
    public boolean not null,
    author_id uuid references users(id) on delete set null,
    author_name text not null default '',
    created_at timestamptz not null default now(),
    primary key (article_id, version)
);

create table kb_attachments (
    id uuid primary key default gen_random_uuid(),
    article_id uuid not null references kb_articles(id) on delete cascade,
    filename text not null check (length(filename) between 1 and 255),
    content_type text not null,
    size_bytes bigint not null,
    sha256 text not null,
    data bytea not null,
    uploaded_by uuid references users(id) on delete set null,
    created_at timestamptz not null default now()
);
create index kb_attachments_article on kb_attachments(article_id, created_at);

-- Every article change writes a row here in the same transaction; the index worker
-- applies it to the search backend and deletes it, or records the error and retries
-- with exponential backoff. No foreign key: delete rows outlive their article.
create table kb_index_outbox (
    id bigserial primary key,
    article_id uuid not null,
    op text not null check (op in ('upsert', 'delete')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    created_at timestamptz not null default now()
);
create index kb_index_outbox_due on kb_index_outbox(next_attempt_at, id);

-- The embedded search index (backend = "postgres"), written only by the index worker
-- so it behaves like an external index: what is here is what search finds.
create table kb_search_docs (
    article_id uuid primary key,
    title text not null,
    body_text text not null,
    category text not null,
    tags text[] not null,
    locale text not null,
    status text not null,
    public boolean not null,
    updated_at timestamptz not null,
    ts_config regconfig not null default 'simple',
    tsv tsvector not null default ''::tsvector
);

create or replace function kb_search_docs_tsv() returns trigger language plpgsql as $$
begin
    new.ts_config := kb_ts_config(new.locale);
    new.tsv := setweight(to_tsvector(new.ts_config, coalesce(new.title, '')), 'A')
            || setweight(to_tsvector(new.ts_config, array_to_string(new.tags, ' ')), 'B')
            || setweight(to_tsvector(new.ts_config, coalesce(new.body_text, '')), 'C');
    return new;
end
$$;

create trigger kb_search_docs_tsv before insert or update on kb_search_docs
    for each row execute function kb_search_docs_tsv();

create index kb_search_docs_tsv_idx on kb_search_docs using gin (tsv);
create index kb_search_docs_title_trgm on kb_search_docs using gin (title gin_trgm_ops);
create index kb_search_docs_filter on kb_search_docs(status, locale, category);
create index kb_search_docs_tags on kb_search_docs using gin (tags);
