#!/usr/bin/env bash
# A local demonstration of ecr-backup, with no cloud account: starts two registries on
# 127.0.0.1, pushes sample images into the first, backs them up into a directory store,
# lists and verifies the backup, restores everything into the second registry, and shows
# that every digest came back unchanged.
#
# Then the serverless path: the real fan-out and worker Lambda binaries, each behind a
# local Lambda Runtime API, the worker fed by an SQS event-source mapping, over moto
# (ECR's API, SQS, S3) and a registry with Basic auth standing in for ECR's data plane
# (the emulator the end-to-end tests use, tests/src/bin/demo-pipeline.rs); then the CLI
# lists, verifies and restores what they wrote to the S3 store. DEMO_PIPELINE=0 skips it.
#
# Installs what it needs first (Debian packages, a Python venv) with tests/scripts/setup.sh.
# Usage: scripts/demo.sh [WORK_DIR]   (default: ./demo-output; servers stopped at the end)
set -euo pipefail

cd "$(dirname "$0")/.."
work=${1:-demo-output}
mkdir -p "$work"
work=$(cd "$work" && pwd)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing what the demo needs"
bash tests/scripts/setup.sh
step "Building ecr-backup"
XX
step "Starting two local registries"
source_registry=$(bash tests/scripts/start-registry.sh "$work/servers" source | tail -n 1)
target_registry=$(bash tests/scripts/start-registry.sh "$work/servers" target | tail -n 1)
echo "source registry: $source_registry"
echo "target registry: $target_registry"

step "Pushing sample images into the source registry"
"$bin/push-sample-images" "$source_registry" demo

step "ecr-backup backup --source $source_registry --store $work/store"
"$bin/ecr-backup" backup --source "$source_registry" --store "$work/store"

step "Backing up again: nothing is downloaded twice"
"$bin/ecr-backup" backup --source "$source_registry" --store "$work/store"

step "ecr-backup ls"
"$bin/ecr-backup" ls --store "$work/store"
"$bin/ecr-backup" ls --store "$work/store" demo/multi

step "ecr-backup verify --read-data"
"$bin/ecr-backup" verify --store "$work/store" --read-data

step "ecr-backup restore --store $work/store --target $target_registry"
"$bin/ecr-backup" restore --store "$work/store" --target "$target_registry"

step "Comparing every tag's digest in the two registries"
accept='application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json'
mismatches=0
for repo in $(curl -fsS "$source_registry/v2/_catalog" | jq -r '.repositories[]'); do
    for tag in $(curl -fsS "$source_registry/v2/$repo/tags/list" | jq -r '.tags[]'); do
        a=$(curl -fsSI -H "Accept: $accept" "$source_registry/v2/$repo/manifests/$tag" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
        b=$(curl -fsSI -H "Accept: $accept" "$target_registry/v2/$repo/manifests/$tag" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
        if [ "$a" = "$b" ]; then
            printf 'same   %s:%.30s %s\n' "$repo" "$tag" "$a"
        else
            printf 'DIFFERENT %s:%s %s != %s\n' "$repo" "$tag" "$a" "$b"
            mismatches=$((mismatches + 1))
        fi
    done
done
if [ "$mismatches" -ne 0 ]; then
    echo "$mismatches tags differ" >&2
    exit 1
fi
step "The CLI's path is done: every image came back with the same digest. The store is in $work/store"

if [ "$pipeline" != 1 ]; then
    exit 0
fi

step "The serverless path: starting moto (ECR API, SQS, S3) and a registry with Basic auth (ECR's data plane)"
bash tests/scripts/start-servers.sh "$work/pipeline-servers" >/dev/null
# shellcheck disable=SC1091
. "$work/pipeline-servers/env"
data_plane=$ECR_BACKUP_TEST_AUTH_REGISTRY
echo "moto: $ECR_BACKUP_TEST_MOTO"
echo "ECR data plane: $data_plane"

"$bin/demo-pipeline" "$ECR_BACKUP_TEST_MOTO" "$data_plane" "$ECR_BACKUP_TEST_AUTH_CREDENTIALS" \
    "$PWD/$bin/ecr-backup-fanout" "$PWD/$bin/ecr-backup-worker" pipeline | tee "$work/pipeline.log"
s3_store=$(tail -n 1 "$work/pipeline.log")
export AWS_ENDPOINT_URL=$ECR_BACKUP_TEST_MOTO

step "ecr-backup ls --store $s3_store (what the Lambdas wrote)"
"$bin/ecr-backup" ls --store "$s3_store"
"$bin/ecr-backup" ls --store "$s3_store" --snapshots

step "ecr-backup verify --store $s3_store --read-data"
"$bin/ecr-backup" verify --store "$s3_store" --read-data

step "ecr-backup du --store $s3_store"
"$bin/ecr-backup" du --store "$s3_store"

step "ecr-backup restore --store $s3_store --target $target_registry"
"$bin/ecr-backup" restore --store "$s3_store" --target "$target_registry"

step "Comparing every tag's digest in the data plane and the target registry"
mismatches=0
auth=(-u "$ECR_BACKUP_TEST_AUTH_CREDENTIALS")
for repo in $(curl -fsS "${auth[@]}" "$data_plane/v2/_catalog" | jq -r '.repositories[]' | grep '^pipeline/'); do
    for tag in $(curl -fsS "${auth[@]}" "$data_plane/v2/$repo/tags/list" | jq -r '.tags[]'); do
        a=$(curl -fsSI "${auth[@]}" -H "Accept: $accept" "$data_plane/v2/$repo/manifests/$tag" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
        b=$(curl -fsSI -H "Accept: $accept" "$target_registry/v2/$repo/manifests/$tag" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
        if [ "$a" = "$b" ]; then
            printf 'same   %s:%.30s %s\n' "$repo" "$tag" "$a"
        else
            printf 'DIFFERENT %s:%s %s != %s\n' "$repo" "$tag" "$a" "$b"
            mismatches=$((mismatches + 1))
        fi
    done
done
if [ "$mismatches" -ne 0 ]; then
    echo "$mismatches tags differ" >&2
    exit 1
fi
step "Done: the Lambdas backed every image up into S3, and every one came back with the same digest"
