#!/bin/sh
# Builds two image archives of one image with tools other than berth; see build_image_archives
# in mod.rs. Usage: build_image.sh DIR
set -eu
cd "$1"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

mkdir -p l1/bin l1/etc l1/data/sub l1/home/user
cp /bin/busybox l1/bin/busybox
ln -s busybox l1/bin/sh
echo 'root:x:0:0:root:/root:/bin/sh' > l1/etc/passwd
echo doomed > l1/etc/doomed
echo old > l1/data/old
echo deep > l1/data/sub/deep
echo mine > l1/home/user/file
chown -R 1000:1000 l1/home/user
chmod 0700 l1/home/user
tar --numeric-owner -C l1 -cf layer1.tar .

mkdir -p l2/etc l2/data
: > l2/etc/.wh.doomed
: > l2/data/.wh..wh..opq
echo new > l2/data/new
echo hello > l2/etc/motd
tar --numeric-owner -C l2 -cf layer2.tar .

diff1=$(sha layer1.tar)
diff2=$(sha layer2.tar)
gzip -n -c layer1.tar > layer1.tar.gz
blob1=$(sha layer1.tar.gz)

printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Entrypoint":["/bin/busybox"],"Cmd":["sh"],"WorkingDir":"/home/user","User":"1000"},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
  "$diff1" "$diff2" > config.json
cfg=$(sha config.json)
echo "$cfg" > id

# OCI image layout: layer 1 gzip, layer 2 plain.
mkdir -p oci/blobs/sha256
cp layer1.tar.gz "oci/blobs/sha256/$blob1"
cp layer2.tar "oci/blobs/sha256/$diff2"
cp config.json "oci/blobs/sha256/$cfg"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cfg" "$(size config.json)" "$blob1" "$(size layer1.tar.gz)" "$diff2" "$(size layer2.tar)" > manifest.json
man=$(sha manifest.json)
cp manifest.json "oci/blobs/sha256/$man"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"shell/oci:v1"}}]}' \
  "$man" "$(size manifest.json)" > oci/index.json
printf '{"imageLayoutVersion":"1.0.0"}' > oci/oci-layout
tar -C oci -cf oci.tar oci-layout index.json blobs

# docker save: config <hex>.json; layer 1 as a digest-named blob (docker >= 25), layer 2 as a
# legacy <v1 id>/layer.tar that is a symlink to its blob, as docker writes duplicates.
mkdir -p docker/blobs/sha256 docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
cp config.json "docker/$cfg.json"
cp layer1.tar.gz "docker/blobs/sha256/$blob1"
cp layer2.tar "docker/blobs/sha256/$diff2"
ln -s "../blobs/sha256/$diff2" docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/layer.tar
printf '[{"Config":"%s.json","RepoTags":["shell/docker:v1"],"Layers":["blobs/sha256/%s","0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/layer.tar"]}]' \
  "$cfg" "$blob1" > docker/manifest.json
tar -C docker -cf - . | gzip -n > docker.tar.gz
