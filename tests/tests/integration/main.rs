mod backup;
mod common;
mod corpus_smoke;
mod export;
mod pipeline;
mod restore;
mod store_s3;
mod verify;
