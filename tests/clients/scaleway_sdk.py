"""Drives Layerline with Scaleway's official Python SDK, unchanged but for its API URL.

Usage: scaleway_sdk.py BASE_URL SECRET_KEY IMAGE_ID
The image IMAGE_ID exists in namespace "sdk-fixture" with tags v1 and latest on one digest.
Every call goes through the SDK's own request building and response parsing; a field the
SDK expects and we do not send, or send with the wrong type, fails here.
"""

import sys

from scaleway import Client
from scaleway.registry.v1 import RegistryV1API
from scaleway_core.api import ScalewayException

base, secret, image_id = sys.argv[1], sys.argv[2], sys.argv[3]
client = Client(
    access_key="SCWXXXXXXXXXXXXXXXXX",
    secret_key=secret,
    api_url=base,
    default_region="fr-par",
    default_project_id="11111111-1111-4111-8111-111111111111",
)
api = RegistryV1API(client)

ns = api.create_namespace(name="sdk-made", description="from the SDK", is_public=False)
assert ns.name == "sdk-made" and ns.status == "ready", ns
assert ns.project_id == "11111111-1111-4111-8111-111111111111", ns.project_id
assert ns.endpoint.endswith("/sdk-made"), ns.endpoint
assert api.get_namespace(namespace_id=ns.id).description == "from the SDK"
updated = api.update_namespace(namespace_id=ns.id, description="changed", is_public=True)
assert updated.is_public is True and updated.description == "changed"

names = sorted(n.name for n in api.list_namespaces_all())
assert names == ["sdk-fixture", "sdk-made"], names
page = api.list_namespaces(page=1, page_size=1, order_by="name_desc")
assert page.total_count == 2 and page.namespaces[0].name == "sdk-made", page

image = api.get_image(image_id=image_id)
assert image.name == "app" and image.size > 0 and sorted(image.tags) == ["latest", "v1"], image
assert api.update_image(image_id=image_id, visibility="public").visibility == "public"
images = api.list_images_all(name="app")
assert [i.id for i in images] == [image_id], images

tags = api.list_tags_all(image_id=image_id, order_by="name_asc")
assert [t.name for t in tags] == ["latest", "v1"], tags
assert api.get_tag(tag_id=tags[0].id).digest == tags[0].digest
try:
    api.delete_tag(tag_id=tags[1].id)
    raise AssertionError("deleting a tag that shares its digest needs force")
except ScalewayException as e:
    assert e.status_code == 409, e
deleted = api.delete_tag(tag_id=tags[1].id, force=True)
assert deleted.name == "v1"
assert api.list_tags(image_id=image_id).total_count == 0

try:
    api.get_namespace(namespace_id="00000000-0000-4000-8000-000000000000")
    raise AssertionError("unknown namespace")
except ScalewayException as e:
    assert e.status_code == 404, e

assert api.delete_image(image_id=image_id).status == "deleting"
assert api.delete_namespace(namespace_id=ns.id).status == "deleting"
print("scaleway sdk: ok")
