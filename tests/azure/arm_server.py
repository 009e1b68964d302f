#!/usr/bin/env python3
"""A test Azure Resource Manager (and Entra ID token endpoint) for ksctl's Azure provider.

No ARM emulator exists, so this server holds requests to what Azure accepts, from Microsoft's own
material on PyPI:

* request bodies are checked against the generated models of the official SDK packages for the
  request's api-version (azure-mgmt-compute, -network, -resource, -containerservice: the models
  are generated from the REST API specs). An unknown member, a wrong type, a missing required or
  a read-only member gets ARM's 400 (`InvalidRequestContent`, `MissingRequiredProperty`…); an
  api-version the SDK has no models for gets `InvalidApiVersionParameter`;
* how each operation answers (status code, `Azure-AsyncOperation` and/or `Location`) is replayed
  from the recordings of real ARM traffic shipped in those packages' source archives
  (`tests/recordings/*.yaml`), e.g. a VM PUT answers 201 with `Azure-AsyncOperation`, a resource
  group DELETE 202 with a `Location` polled until 200;
* references between resources (a NIC's subnet, public IP and NSG, a VM's NIC) must exist, as ARM
  checks (`InvalidResourceReference`); a resource group must exist before anything in it.

State is kept in memory. Long-running operations report `InProgress` for `--polls` polls. Test
controls (no authentication): `POST /_test/throttle {"count": n, "retry_after": s}` answers the
next n ARM requests 429; `GET /_test/log` lists every request; `GET /_test/resources`.

Usage: arm_server.py --port P --cert C --key K --recordings DIR [--polls N] [--retry-after S]
Environment: ARM_TENANT, ARM_CLIENT_ID, ARM_CLIENT_SECRET, ARM_SUBSCRIPTION.
"""
import argparse
import base64
import glob
import importlib
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

# An AKS kubeconfig's CA: the PEM shape ksctl checks for (the server is never dialled).
FAKE_CA_DATA = base64.b64encode(b'-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n').decode()

TENANT = os.environ.get("ARM_TENANT", "72f988bf-86f1-41af-91ab-2d7cd011db47")
CLIENT_ID = os.environ.get("ARM_CLIENT_ID", "ksctl-test-client")
CLIENT_SECRET = os.environ.get("ARM_CLIENT_SECRET", "ksctl-test-secret")
SUBSCRIPTION = os.environ.get("ARM_SUBSCRIPTION", "00000000-0000-0000-0000-000000000000")

# (provider/type chain) → (SDK models package, model class); the module is chosen by api-version.
MODELS = {
    "resourcegroups": ("azure.mgmt.resource.resources", "ResourceGroup"),
    "microsoft.network/virtualnetworks": ("azure.mgmt.network", "VirtualNetwork"),
    "microsoft.network/virtualnetworks/subnets": ("azure.mgmt.network", "Subnet"),
    "microsoft.network/networksecuritygroups": ("azure.mgmt.network", "NetworkSecurityGroup"),
    "microsoft.network/publicipaddresses": ("azure.mgmt.network", "PublicIPAddress"),
    "microsoft.network/networkinterfaces": ("azure.mgmt.network", "NetworkInterface"),
    "microsoft.compute/virtualmachines": ("azure.mgmt.compute", "VirtualMachine"),
    "microsoft.containerservice/managedclusters": ("azure.mgmt.containerservice", "ManagedCluster"),
    "microsoft.containerservice/managedclusters/agentpools": ("azure.mgmt.containerservice", "AgentPool"),
}


def models_for(package, api_version):
    mod = package + ".v" + api_version.replace("-", "_") + ".models"
    try:
        return importlib.import_module(mod)
    except ImportError:
        return None


class Invalid(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def check_value(models, type_name, value, where):
    """`value` must have msrest type `type_name` (str, int, bool, [T], {T}, a model)."""
    if type_name.startswith("[") and type_name.endswith("]"):
        if not isinstance(value, list):
            raise Invalid("InvalidRequestContent", f"{where}: expected an array")
        for i, v in enumerate(value):
            check_value(models, type_name[1:-1], v, f"{where}[{i}]")
        return
    if type_name.startswith("{") and type_name.endswith("}"):
        if not isinstance(value, dict):
            raise Invalid("InvalidRequestContent", f"{where}: expected an object")
        for k, v in value.items():
            check_value(models, type_name[1:-1], v, f"{where}.{k}")
        return
    simple = {"str": str, "int": int, "long": int, "bool": bool, "float": (int, float)}
    if type_name in simple:
        ok = isinstance(value, simple[type_name]) and not (type_name in ("int", "long") and isinstance(value, bool))
        if not ok:
            raise Invalid("InvalidRequestContent", f"{where}: expected {type_name}, got {json.dumps(value)}")
        return
    if type_name in ("iso-8601", "duration", "object", "bytearray", "base64"):
        return
    cls = getattr(models, type_name, None)
    if cls is None:
        return  # an enum or a type msrest treats as a string
    if hasattr(cls, "_attribute_map") and isinstance(value, dict):
        check_model(models, cls, value, where)
    elif isinstance(value, dict):
        raise Invalid("InvalidRequestContent", f"{where}: {type_name} is not an object")


def check_model(models, cls, body, where):
    """Every member known, typed, required ones present and read-only ones absent (msrest's
    flattened keys like `properties.hardwareProfile` as in the wire format)."""
    amap = cls._attribute_map
    validation = getattr(cls, "_validation", {})
    by_key = {}
    for attr, spec in amap.items():
        by_key[spec["key"].replace("\\.", "\0")] = (attr, spec["type"])

    def walk(obj, prefix):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else k
            if key in by_key:
                attr, t = by_key[key]
                if validation.get(attr, {}).get("readonly") and v is not None:
                    raise Invalid("InvalidRequestContent", f"{where}.{key} is read-only")
                if v is not None:
                    check_value(models, t, v, f"{where}.{key}")
                    check_constraints(validation.get(attr, {}), v, f"{where}.{key}")
            elif isinstance(v, dict) and any(x.startswith(key + ".") for x in by_key):
                walk(v, key)
            else:
                raise Invalid(
                    "InvalidRequestContent",
                    f"The request content was invalid: could not find member '{k}' on object of type "
                    f"'{cls.__name__}' ({where}.{key})",
                )

    walk(body, "")
    for attr, rules in validation.items():
        if rules.get("required") and not rules.get("constant"):
            key = amap[attr]["key"].replace("\\.", "\0")
            cur = body
            for part in key.split("."):
                cur = cur.get(part.replace("\0", ".")) if isinstance(cur, dict) else None
            if cur is None:
                raise Invalid("MissingRequiredProperty", f"{where}.{key} is required")


def check_constraints(rules, v, where):
    if isinstance(v, str):
        if "pattern" in rules and not re.search(rules["pattern"], v):
            raise Invalid("InvalidParameter", f"{where}: {v!r} does not match {rules['pattern']}")
        if "max_length" in rules and len(v) > rules["max_length"]:
            raise Invalid("InvalidParameter", f"{where}: longer than {rules['max_length']}")
    if isinstance(v, int) and not isinstance(v, bool):
        if "maximum" in rules and v > rules["maximum"]:
            raise Invalid("InvalidParameter", f"{where}: more than {rules['maximum']}")
        if "minimum" in rules and v < rules["minimum"]:
            raise Invalid("InvalidParameter", f"{where}: less than {rules['minimum']}")


def type_key(path_parts):
    """`resourceGroups/rg/providers/NS/t1/n1/t2/n2` → ('ns/t1/t2', [n1, n2])."""
    if len(path_parts) == 2:
        return "resourcegroups", []
    ns = path_parts[3]
    rest = path_parts[4:]
    types = [rest[i] for i in range(0, len(rest), 2)]
    names = [rest[i] for i in range(1, len(rest), 2)]
    return "/".join([ns] + types).lower(), names


def replayed_patterns(recordings):
    """(method, type) → (status, Azure-AsyncOperation?, Location?) from the first recorded answer."""
    out = {}
    for f in sorted(glob.glob(os.path.join(recordings, "*.yaml"))):
        with open(f) as fh:
            data = yaml.safe_load(fh)
        for it in data["interactions"]:
            req, resp = it["request"], it["response"]
            if req["method"] not in ("PUT", "DELETE"):
                continue
            path = urllib.parse.urlparse(req["uri"]).path.split("/")[3:]
            if len(path) < 2 or path[0].lower() != "resourcegroups":
                continue
            if len(path) > 2 and (len(path) < 6 or path[2] != "providers" or len(path) % 2):
                continue
            key = (req["method"], type_key(path)[0])
            headers = {k.lower(): v for k, v in resp.get("headers", {}).items()}
            status = resp["status"]["code"]
            if key not in out and status < 300:
                out[key] = (status, "azure-asyncoperation" in headers, "location" in headers)
    return out


class State:
    def __init__(self, args):
        # Re-entrant: replies log under it, and some replies are sent while it is held.
        self.lock = threading.RLock()
        self.resources = {}  # lower-case id → (id, type key, body)
        self.operations = {}  # op id → dict
        self.tokens = set()
        self.log = []
        self.throttle = 0
        self.throttle_after = 1
        self.polls = args.polls
        self.retry_after = args.retry_after
        self.patterns = replayed_patterns(args.recordings)
        self.writes_left = 1199


def arm_error(code, message):
    return {"error": {"code": code, "message": message}}


def make_handler(state, base_url):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def reply(self, status, body=None, headers=None):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            with state.lock:
                state.log.append({"method": self.command, "path": self.path, "status": status})

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self):
            self.handle_any("GET")

        def do_PUT(self):
            self.handle_any("PUT")

        def do_DELETE(self):
            self.handle_any("DELETE")

        def do_POST(self):
            self.handle_any("POST")

        def do_PATCH(self):
            self.handle_any("PATCH")

        def do_HEAD(self):
            self.handle_any("HEAD")

        def handle_any(self, method):
            url = urllib.parse.urlparse(self.path)
            query = urllib.parse.parse_qs(url.query)
            raw = self.body()
            try:
                if url.path.startswith("/_test/"):
                    return self.control(method, url.path, raw)
                if method == "POST" and url.path == f"/{TENANT}/oauth2/v2.0/token":
                    return self.token(raw)
                self.arm(method, url.path, query, raw)
            except Invalid as e:
                self.reply(400, arm_error(e.code, e.message))
            except Exception as e:  # a bug here must not look like a network failure
                self.reply(500, arm_error("InternalServerError", f"test server: {type(e).__name__}: {e}"))

        def control(self, method, path, raw):
            with state.lock:
                if path == "/_test/throttle" and method == "POST":
                    cfg = json.loads(raw or b"{}")
                    state.throttle = cfg.get("count", 1)
                    state.throttle_after = cfg.get("retry_after", 1)
                    return self.reply(200, {})
                if path == "/_test/log":
                    return self.reply(200, list(state.log))
                if path == "/_test/resources":
                    return self.reply(200, {v[0]: v[2] for v in state.resources.values()})
            self.reply(404, arm_error("NotFound", path))

        def token(self, raw):
            form = urllib.parse.parse_qs(raw.decode())
            if form.get("client_id") != [CLIENT_ID] or form.get("client_secret") != [CLIENT_SECRET]:
                return self.reply(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})
            if form.get("grant_type") != ["client_credentials"] or "https://management.azure.com/.default" not in form.get("scope", [""])[0]:
                return self.reply(400, {"error": "invalid_request", "error_description": "bad grant or scope"})
            tok = base64.urlsafe_b64encode(os.urandom(24)).decode()
            with state.lock:
                state.tokens.add(tok)
            self.reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": tok})

        def arm(self, method, path, query, raw):
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in state.tokens:
                return self.reply(401, arm_error("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or invalid."))
            with state.lock:
                if state.throttle > 0:
                    state.throttle -= 1
                    return self.reply(429, arm_error("TooManyRequests", "The request is being throttled."),
                                      {"Retry-After": str(state.throttle_after), "x-ms-ratelimit-remaining-subscription-writes": "0"})
            if "api-version" not in query:
                raise Invalid("MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
            api = query["api-version"][0]
            parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
            if len(parts) < 2 or parts[0] != "subscriptions" or parts[1] != SUBSCRIPTION:
                return self.reply(404, arm_error("SubscriptionNotFound", f"The subscription in {path} could not be found."))
            rest = parts[2:]
            if len(rest) >= 5 and rest[0] == "providers" and rest[2] == "locations" and rest[4] in ("operations", "operationresults"):
                return self.operation(rest[5] if len(rest) > 5 else "", rest[4])
            if not rest or rest[0].lower() != "resourcegroups":
                return self.reply(404, arm_error("NotFound", path))
            if len(rest) == 3 and rest[2] == "resources" and method == "GET":
                return self.list_group(rest[1])
            action = None
            if len(rest) > 2 and (len(rest) < 6 or rest[2].lower() != "providers" or len(rest) % 2):
                action, rest = rest[-1], rest[:-1]
                if len(rest) < 6 or len(rest) % 2:
                    return self.reply(404, arm_error("NotFound", path))
            tkey, _ = type_key(rest)
            rid = "/subscriptions/" + SUBSCRIPTION + "/" + "/".join(rest)
            if tkey not in MODELS:
                return self.reply(400, arm_error("NoRegisteredProviderFound", f"No registered resource provider found for type '{tkey}'."))
            package, model = MODELS[tkey]
            models = models_for(package, api)
            if models is None:
                raise Invalid("InvalidApiVersionParameter", f"The api-version '{api}' is invalid for resource type '{tkey}'.")
            if action is not None:
                return self.action(method, rid, tkey, action)
            if method == "PUT":
                return self.put(rid, tkey, rest, models, model, raw, api)
            if method in ("GET", "HEAD"):
                with state.lock:
                    cur = state.resources.get(rid.lower())
                if cur is None:
                    code = "ResourceGroupNotFound" if tkey == "resourcegroups" else "ResourceNotFound"
                    return self.reply(404, arm_error(code, f"The Resource '{rid}' was not found."))
                return self.reply(204 if method == "HEAD" else 200, None if method == "HEAD" else cur[2])
            if method == "DELETE":
                return self.delete(rid, tkey, api)
            self.reply(405, arm_error("MethodNotAllowed", method))

        def group_exists(self, rest):
            gid = ("/subscriptions/" + SUBSCRIPTION + "/resourceGroups/" + rest[1]).lower()
            with state.lock:
                return gid in state.resources

        def put(self, rid, tkey, rest, models, model, raw, api):
            try:
                body = json.loads(raw)
            except ValueError:
                raise Invalid("InvalidRequestContent", "The request content is not valid JSON.")
            if not isinstance(body, dict):
                raise Invalid("InvalidRequestContent", "The request content must be an object.")
            check_model(models, getattr(models, model), body, model)
            if tkey != "resourcegroups" and not self.group_exists(rest):
                return self.reply(404, arm_error("ResourceGroupNotFound", f"Resource group '{rest[1]}' could not be found."))
            if "/" in tkey and tkey.count("/") == 2:
                parent = "/".join(rid.split("/")[:-2]).lower()
                with state.lock:
                    if parent not in state.resources:
                        return self.reply(404, arm_error("ParentResourceNotFound", f"Parent of {rid} not found."))
            for ref in references(body):
                with state.lock:
                    if ref.lower() not in state.resources:
                        raise Invalid("InvalidResourceReference", f"Resource {ref} referenced by resource {rid} was not found.")
            stored = complete(rid, tkey, body, rest)
            with state.lock:
                existed = rid.lower() in state.resources
                state.resources[rid.lower()] = (rid, tkey, stored)
                if tkey == "microsoft.network/virtualnetworks":
                    # Subnets given inline exist as child resources, as in ARM.
                    for sub in stored["properties"].get("subnets", []):
                        sid = f"{rid}/subnets/{sub['name']}"
                        sub["id"] = sid
                        sub.setdefault("properties", {})["provisioningState"] = "Succeeded"
                        state.resources[sid.lower()] = (sid, tkey + "/subnets", dict(sub, type=stored["type"] + "/subnets"))
                if tkey == "microsoft.network/virtualnetworks/subnets":
                    vnet = state.resources["/".join(rid.split("/")[:-2]).lower()][2]
                    subs = [s for s in vnet["properties"].setdefault("subnets", []) if s["name"] != stored["name"]]
                    vnet["properties"]["subnets"] = subs + [stored]
            status, asyncop, location = state.patterns.get(("PUT", tkey), (201, True, False))
            if existed:
                status = 200
            headers = {}
            if asyncop or location:
                op = self.new_operation(rid, "Succeeded", tkey, api)
                headers = self.lro_headers(op, asyncop, location, tkey, api)
                stored = dict(stored, properties=dict(stored.get("properties", {}), provisioningState="Updating" if existed else "Creating"))
            self.reply(status, stored, headers)

        def delete(self, rid, tkey, api):
            with state.lock:
                cur = state.resources.get(rid.lower())
            if cur is None:
                return self.reply(204)
            with state.lock:
                children = [k for k in state.resources if k.startswith(rid.lower() + "/")]
                if tkey != "resourcegroups":
                    for other in state.resources.values():
                        if rid.lower() in [r.lower() for r in references(other[2])] and not other[0].lower().startswith(rid.lower()):
                            return self.reply(400, arm_error("InUseSubnetCannotBeDeleted" if "subnet" in tkey else "ResourceInUse",
                                                             f"{rid} is in use by {other[0]} and cannot be deleted."))
                for k in children + [rid.lower()]:
                    del state.resources[k]
            status, asyncop, location = state.patterns.get(("DELETE", tkey), (202, True, True))
            op = self.new_operation(rid, "Succeeded", tkey, api)
            self.reply(status, None, self.lro_headers(op, asyncop, location, tkey, api))

        def action(self, method, rid, tkey, action):
            with state.lock:
                cur = state.resources.get(rid.lower())
            if cur is None:
                return self.reply(404, arm_error("ResourceNotFound", f"The Resource '{rid}' was not found."))
            if method == "POST" and tkey == "microsoft.containerservice/managedclusters" and action == "listClusterAdminCredential":
                fqdn = cur[2]["properties"]["fqdn"]
                kc = (f"apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {FAKE_CA_DATA}\n"
                      f"    server: https://{fqdn}:443\n  name: {cur[2]['name']}\ncontexts:\n- context:\n    cluster: {cur[2]['name']}\n"
                      f"    user: clusterAdmin_{cur[2]['name']}\n  name: {cur[2]['name']}-admin\ncurrent-context: {cur[2]['name']}-admin\n"
                      f"users:\n- name: clusterAdmin_{cur[2]['name']}\n  user:\n    token: {uuid.uuid4().hex}\n")
                return self.reply(200, {"kubeconfigs": [{"name": "clusterAdmin", "value": base64.b64encode(kc.encode()).decode()}]})
            self.reply(404, arm_error("NotFound", action))

        def list_group(self, group):
            prefix = ("/subscriptions/" + SUBSCRIPTION + "/resourceGroups/" + group + "/").lower()
            with state.lock:
                items = [v[2] for k, v in state.resources.items() if k.startswith(prefix) and v[1].count("/") == 1]
            self.reply(200, {"value": [{"id": i["id"], "name": i["name"], "type": i["type"], "location": i.get("location"), "tags": i.get("tags", {})} for i in items]})

        def new_operation(self, rid, outcome, tkey, api):
            op = str(uuid.uuid4())
            with state.lock:
                state.operations[op] = {"left": state.polls, "status": outcome, "rid": rid}
            return op

        def lro_headers(self, op, asyncop, location, tkey, api):
            ns = "Microsoft.Resources" if tkey == "resourcegroups" else tkey.split("/")[0]
            base = f"{base_url}/subscriptions/{SUBSCRIPTION}/providers/{ns}/locations/westeurope"
            h = {"Retry-After": str(state.retry_after)}
            if asyncop:
                h["Azure-AsyncOperation"] = f"{base}/operations/{op}?api-version={api}"
            if location:
                h["Location"] = f"{base}/operationresults/{op}?api-version={api}"
            return h

        def operation(self, op_id, kind):
            with state.lock:
                op = state.operations.get(op_id)
                if op is None:
                    return self.reply(404, arm_error("NotFound", f"operation {op_id}"))
                done = op["left"] <= 0
                op["left"] -= 1
            headers = {"Retry-After": str(state.retry_after)}
            if kind == "operationresults":
                return self.reply(200 if done else 202, None, {} if done else headers)
            status = op["status"] if done else "InProgress"
            self.reply(200, {"name": op_id, "status": status, "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ")}, {} if done else headers)

    return Handler


def references(body):
    """Every `id` of a sub-resource the body points at (other than the resource's own)."""
    out = []

    def walk(v, top):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "id" and isinstance(x, str) and not top:
                    out.append(x)
                else:
                    walk(x, False)
        elif isinstance(v, list):
            for x in v:
                walk(x, False)

    walk(body, True)
    return out


def complete(rid, tkey, body, rest):
    """The resource as ARM returns it: id, name, type, provisioning state and what Azure assigns."""
    out = json.loads(json.dumps(body))
    out["id"] = rid
    out["name"] = rid.split("/")[-1]
    if tkey == "resourcegroups":
        out["type"] = "Microsoft.Resources/resourceGroups"
    else:
        out["type"] = "/".join([rest[3]] + [rest[i] for i in range(4, len(rest), 2)])
    props = out.setdefault("properties", {})
    props["provisioningState"] = "Succeeded"
    if tkey == "microsoft.network/publicipaddresses":
        props["ipAddress"] = f"20.{os.getpid() % 200}.{len(rid) % 250}.{uuid.uuid4().int % 250 + 1}"
    if tkey == "microsoft.network/networkinterfaces":
        for i, cfg in enumerate(props.get("ipConfigurations", [])):
            cfg.setdefault("properties", {})["privateIPAddress"] = f"10.1.0.{4 + uuid.uuid4().int % 200}"
            cfg["id"] = f"{rid}/ipConfigurations/{cfg.get('name', i)}"
    if tkey == "microsoft.containerservice/managedclusters":
        props["fqdn"] = f"{props.get('dnsPrefix', out['name'])}-{uuid.uuid4().hex[:8]}.hcp.westeurope.azmk8s.io"
        props.setdefault("powerState", {"code": "Running"})
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--recordings", required=True)
    p.add_argument("--polls", type=int, default=2)
    p.add_argument("--retry-after", type=int, default=0)
    args = p.parse_args()
    state = State(args)
    base = f"https://127.0.0.1:{args.port}"
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(state, base))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"arm test server on {base}: {len(state.patterns)} replayed patterns", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
