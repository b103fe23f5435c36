extends SceneTree
# A Godot 3.2 client of the asset origin, run headless by tests/test_godot.py:
#   godot3-server -s client.gd -- key=value ...
# It prints exactly one line "RESULT {json}" and exits 0 when it got that far; the Python test
# asserts on the JSON, because a GDScript parse error also exits 0 and prints no RESULT line.
# Only HTTPClient is used: HTTPRequest cannot send binary bodies in Godot 3.

# Per request; nine requests stay well inside the Python side's 120 s bound.
const TIMEOUT_MS = 10000

var host := "127.0.0.1"
var port := 0
var http := HTTPClient.new()
var connects := 0


func _init() -> void:
	var args := _user_args()
	var result := {}
	var origin: String = args.get("origin", "")
	var parsed := origin.replace("http://", "").split(":")
	host = parsed[0]
	port = int(parsed[1]) if parsed.size() > 1 else 80
	var token: String = args.get("token", "")
	var auth := "Authorization: Bearer " + token
	var digest: String = args.get("digest", "")
	var etag := "\"" + digest + "\""
	var path := "/blobs/" + digest

	# 1. Full GET streamed into a file, verified against Repr-Digest with SHA-256.
	var save_to: String = args.get("save_to", "")
	var r := _request(HTTPClient.METHOD_GET, path, [], PoolByteArray(), save_to)
	var repr := _repr_sha256(r.headers.get("repr-digest", ""))
	result["get"] = {
		"status": r.status,
		"error": r.error,
		"content_length": int(r.headers.get("content-length", "-1")),
		"received": r.received,
		"etag": r.headers.get("etag", ""),
		"content_type": r.headers.get("content-type", ""),
		"repr_sha256": repr,
		"stream_sha256": r.sha256,
		"file_sha256": File.new().get_sha256(save_to) if save_to != "" else "",
	}

	# 2. HEAD: the headers of a GET and no body (Godot must not wait for Content-Length bytes).
	r = _request(HTTPClient.METHOD_HEAD, path, [], PoolByteArray(), "")
	result["head"] = {
		"status": r.status,
		"error": r.error,
		"content_length": int(r.headers.get("content-length", "-1")),
		"etag": r.headers.get("etag", ""),
		"received": r.received,
	}

	# 3. One range.
	r = _request(HTTPClient.METHOD_GET, path, ["Range: bytes=10-19"], PoolByteArray(), "")
	result["range"] = {
		"status": r.status,
		"error": r.error,
		"content_range": r.headers.get("content-range", ""),
		"hex": r.body.hex_encode(),
	}

	# 4. Revalidation: a 304 has no body and must leave the connection usable.
	r = _request(HTTPClient.METHOD_GET, path, ["If-None-Match: " + etag], PoolByteArray(), "")
	result["not_modified"] = {"status": r.status, "error": r.error, "received": r.received}

	# 5. Unknown digest.
	r = _request(HTTPClient.METHOD_GET, "/blobs/" + args.get("missing", ""), [], PoolByteArray(), "")
	result["missing"] = {
		"status": r.status,
		"error": r.error,
		"content_type": r.headers.get("content-type", ""),
	}

	# 6. Upload without knowing BLAKE3: the server computes and returns the digest.
	var post_body := _read_file(args.get("post_file", ""))
	r = _request(
		HTTPClient.METHOD_POST,
		"/blobs",
		[auth, "Content-Type: application/octet-stream"],
		post_body,
		""
	)
	var posted = parse_json(r.body.get_string_from_utf8()) if r.body.size() > 0 else null
	result["post"] = {
		"status": r.status,
		"error": r.error,
		"sent": post_body.size(),
		"location": r.headers.get("location", ""),
		"digest": posted.get("digest", "") if posted is Dictionary else "",
		"size": posted.get("size", -1) if posted is Dictionary else -1,
		"sha256": posted.get("sha256", "") if posted is Dictionary else "",
		"local_sha256": _sha256(post_body),
	}

	# 7. Upload under a digest the caller computed.
	var put_body := _read_file(args.get("put_file", ""))
	r = _request(
		HTTPClient.METHOD_PUT,
		"/blobs/" + args.get("put_digest", ""),
		[auth, "Content-Type: application/octet-stream"],
		put_body,
		""
	)
	result["put"] = {"status": r.status, "error": r.error, "sent": put_body.size()}

	# 8. A rejected upload: Godot writes the whole body before reading, so it only sees the 401
	# if the server reads the body instead of closing on it.
	var denied_body := _read_file(args.get("denied_file", ""))
	r = _request(
		HTTPClient.METHOD_PUT,
		"/blobs/" + args.get("denied_digest", ""),
		["Content-Type: application/octet-stream"],
		denied_body,
		""
	)
	result["put_unauthorized"] = {
		"status": r.status,
		"error": r.error,
		"sent": denied_body.size(),
		"content_type": r.headers.get("content-type", ""),
	}

	# 9. Checking for a blob by the one hash Godot can compute; HTTPClient does not follow
	# redirects, so the 308 and its Location are what a client sees.
	var sha_path: String = "/blobs/sha256/" + args.get("sha256", "")
	r = _request(HTTPClient.METHOD_HEAD, sha_path, [], PoolByteArray(), "")
	result["sha256_alias"] = {
		"status": r.status,
		"error": r.error,
		"location": r.headers.get("location", ""),
	}

	result["connects"] = connects
	result["engine"] = Engine.get_version_info().get("string", "")
	print("RESULT " + to_json(result))
	http.close()
	quit(0)


func _user_args() -> Dictionary:
	var out := {}
	var after_dashes := false
	for arg in OS.get_cmdline_args():
		if arg == "--":
			after_dashes = true
		elif after_dashes and "=" in arg:
			var i: int = arg.find("=")
			out[arg.substr(0, i)] = arg.substr(i + 1, arg.length() - i - 1)
	return out


func _read_file(path: String) -> PoolByteArray:
	var f := File.new()
	if path == "" or f.open(path, File.READ) != OK:
		return PoolByteArray()
	var data := f.get_buffer(f.get_len())
	f.close()
	return data


func _sha256(data: PoolByteArray) -> String:
	var ctx := HashingContext.new()
	ctx.start(HashingContext.HASH_SHA256)
	ctx.update(data)
	return ctx.finish().hex_encode()


# "sha-256=:<base64>:" -> lowercase hex, or "" when absent or malformed.
func _repr_sha256(field: String) -> String:
	for member in field.split(","):
		var m: String = member.strip_edges()
		if m.begins_with("sha-256=:") and m.ends_with(":"):
			var b64 := m.substr(9, m.length() - 10)
			return Marshalls.base64_to_raw(b64).hex_encode()
	return ""


func _error(msg: String) -> Dictionary:
	http.close()
	return {"status": -1, "error": msg, "headers": {}, "body": PoolByteArray(), "received": 0,
			"sha256": ""}


# Reuses the keep-alive connection when it is still open (as a game client would), so a
# response that Godot misframes (a HEAD or a 304 read as having a body) breaks the next check.
func _ensure_connected(deadline: int) -> String:
	if http.get_status() == HTTPClient.STATUS_CONNECTED:
		return ""
	http.close()
	if http.connect_to_host(host, port) != OK:
		return "connect_to_host failed"
	connects += 1
	while OS.get_ticks_msec() < deadline:
		http.poll()
		var s := http.get_status()
		if s == HTTPClient.STATUS_CONNECTED:
			return ""
		if s != HTTPClient.STATUS_CONNECTING and s != HTTPClient.STATUS_RESOLVING:
			return "connect status %d" % s
		OS.delay_msec(1)
	return "connect timeout"


func _request(method: int, path: String, headers: Array, body: PoolByteArray, sink: String) -> Dictionary:
	var deadline := OS.get_ticks_msec() + TIMEOUT_MS
	var err := _ensure_connected(deadline)
	if err != "":
		return _error(err)
	var sent: int
	if body.size() > 0:
		sent = http.request_raw(method, path, PoolStringArray(headers), body)
	else:
		sent = http.request(method, path, PoolStringArray(headers))
	if sent != OK:
		return _error("request failed: %d" % sent)
	while http.get_status() == HTTPClient.STATUS_REQUESTING:
		if OS.get_ticks_msec() > deadline:
			return _error("timeout waiting for the response head")
		http.poll()
		OS.delay_msec(1)
	if not http.has_response():
		return _error("no response, status %d" % http.get_status())

	var out := {
		"status": http.get_response_code(),
		"error": "",
		"headers": {},
		"body": PoolByteArray(),
		"received": 0,
		"sha256": "",
	}
	# Header names are case-insensitive; Godot keeps them as the server spelled them.
	for line in http.get_response_headers():
		var i: int = line.find(":")
		if i > 0:
			out.headers[line.substr(0, i).strip_edges().to_lower()] = line.substr(i + 1, line.length() - i - 1).strip_edges()

	var file: File = null
	if sink != "":
		file = File.new()
		if file.open(sink, File.WRITE) != OK:
			return _error("cannot open " + sink)
	var ctx := HashingContext.new()
	ctx.start(HashingContext.HASH_SHA256)
	# Pool arrays are values in GDScript 3: appending to out.body would change a copy.
	var got := PoolByteArray()
	var received := 0
	while http.get_status() == HTTPClient.STATUS_BODY:
		if OS.get_ticks_msec() > deadline:
			if file:
				file.close()
			return _error("timeout reading the body after %d bytes" % received)
		http.poll()
		var chunk := http.read_response_body_chunk()
		if chunk.size() == 0:
			OS.delay_msec(1)
			continue
		received += chunk.size()
		ctx.update(chunk)
		if file:
			file.store_buffer(chunk)
		else:
			got.append_array(chunk)
	if file:
		file.close()
	var end := http.get_status()
	if end != HTTPClient.STATUS_CONNECTED and end != HTTPClient.STATUS_DISCONNECTED:
		out.error = "status %d after the body" % end
	out.body = got
	out.received = received
	out.sha256 = ctx.finish().hex_encode()
	return out
