mod backup;
mod common;
mod corpus_smoke;
mod export;
mod restore;
mod store_s3;
mod verify;
