"""Checks the Python reference of docs/sharding-spec.md (section 8) against routing-test-vectors.json.

Run: python3 docs/verify_python_reference.py  (standard library only)
"""
import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
spec = (HERE / "sharding-spec.md").read_text(encoding="utf-8")
code = re.search(r"## 8\. Python reference.*?```python\n(.*?)```", spec, re.S).group(1)
ref = {}
exec(code, ref)  # the reference is the spec's own code block, so the page cannot drift from it
vectors = json.loads((HERE / "routing-test-vectors.json").read_text(encoding="utf-8"))


def expand(runs):
    return [r["shardId"] for r in runs for _ in range(r["to"] - r["from"] + 1)]


checked = 0
for t in vectors["murmur3ReferenceVectors"]["vectors"]:
    data = bytes.fromhex(t["hexBytes"]) if "hexBytes" in t else t["text"].encode("utf-8")
    assert ref["murmur3_32"](data, int(t["seed"], 16)) == int(t["hash"], 16), t
    checked += 1
for case in vectors["slotQuotas"]:
    built = ref["build_slot_map"]([(s["shardId"], s["weight"]) for s in case["shards"]])
    assert built["assignments"] == expand(case["runs"]), case["shards"]
    checked += 1
four = ref["build_slot_map"]([("shard_00%d" % i, 1) for i in range(1, 5)])
assert four["assignments"] == expand(vectors["fourEqualShards"]["map"]["runs"])
five = ref["add_shard"](four, "shard_005", 1)
assert five["version"] == 2 and five["assignments"] == expand(vectors["addFifthShard"]["map"]["runs"])
checked += 2
for k in vectors["keys"]:
    assert k["key"].encode("utf-8") == bytes.fromhex(k["utf8Hex"]), k["key"]
    assert "0x%08x" % ref["murmur3_32"](k["key"].encode("utf-8")) == k["murmur3"], k["key"]
    assert ref["slot_of"](k["key"]) == k["slot"], k["key"]
    assert ref["route_hash"](four, k["key"]) == k["shardFourEqual"], k["key"]
    assert ref["route_hash"](five, k["key"]) == k["shardAfterFifth"], k["key"]
    checked += 1
for f in vectors["keyForms"]["forms"]:
    assert ref["canonical_key"](f["key"]) == f["canonical"], f["key"]
    assert ref["slot_of"](f["key"]) == f["slot"], f["key"]
    assert ref["route_hash"](four, f["key"]) == f["shardFourEqual"], f["key"]
    checked += 1
print("python reference matches all %d vectors" % checked)
