"""Lua scripts: every cluster state change that must happen exactly once is one atomic script.

Atomicity is what makes "exactly once" hold without locks: a presence transition is the
script call whose HDEL/HSET changed the count across zero, and a dead node is cleaned up by
the one reaper whose ZREM removed it. Times come from Redis (`TIME`), never from node
clocks, so skewed clocks cannot kill a live node.

Keys used (``P`` is the prefix): ``P:nodes`` (zset node → last heartbeat ms),
``P:node:ID`` (hash: address, started), ``P:node:ID:presence`` (set of ``key NUL sid``),
``P:presence:KEY`` (hash sid → node), ``P:presence-done:KEY`` (recent transition answers
per call), ``P:reaped:ID`` (marker: ID was declared dead),
``P:epoch`` (membership version), ``P:draining`` (live nodes handing their rooms over).
Announcements are published on ``P:cluster``. On a Redis Cluster ``P`` is ``{P}`` for all of
these (one slot: REAP and RESYNC reach keys they find inside the script, which must share
the slot of the keys they are given); docs/cluster.md#redis-cluster has the whole layout.
"""

from __future__ import annotations


def publishing(script: str, sharded: bool) -> str:
    """`script` with its PUBLISHes made SPUBLISHes on a Redis Cluster: there a script may
    publish only on a shard channel of its own slot (classic PUBLISH would go to every node
    of the cluster, the fan-out sharding exists to avoid). Redis < 7 has no SPUBLISH, so one
    Redis keeps PUBLISH."""
    return script.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'") if sharded else script

# KEYS: nodes, node info, epoch, reaped marker
# ARGV: node id, address, started, announce channel, announcement prefix byte
# -> {state, epoch, redis_ms}: state 0 = known, 1 = newly registered, 2 = we had been reaped
HEARTBEAT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'address', ARGV[2], 'started', ARGV[3])
if known then
  return {0, tonumber(redis.call('GET', KEYS[3]) or '0'), now}
end
local state = 1
if redis.call('DEL', KEYS[4]) == 1 then state = 2 end
local epoch = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. cjson.encode({t = 'node', ev = 'join', node = ARGV[1], epoch = epoch}))
return {state, epoch, now}
"""

# The membership in one read (a script rather than MULTI: redis-py's cluster transactions
# fail on ZRANGE's reply callback, and a script is one round trip on both kinds of Redis).
# KEYS: nodes, epoch, draining   -> {live nodes, epoch or false, draining nodes}
MEMBERSHIP = """
return {redis.call('ZRANGE', KEYS[1], 0, -1), redis.call('GET', KEYS[2]), redis.call('SMEMBERS', KEYS[3])}
"""

# A node hands its rooms over: it joins the draining set and the membership version moves.
# KEYS: draining, epoch   ARGV: node id   -> the new epoch
DRAIN = """
redis.call('SADD', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[2])
"""

# Remove dead nodes (or, with ARGV[5] set, this leaving node) and their presence entries.
# KEYS: nodes, epoch
# ARGV: prefix, dead_after_ms, announce channel, announcement prefix byte, leaving node id, reaper id
# -> flat list {node, {lost keys...}, node, {...}, ...}
REAP = """
local prefix = ARGV[1]
local dead
local event = 'dead'
if ARGV[5] ~= '' then
  dead = {}
  if redis.call('ZSCORE', KEYS[1], ARGV[5]) then dead = {ARGV[5]} end
  event = 'leave'
else
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  dead = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))) do
    -- a node never declares itself dead: if it can run this, it will heartbeat again
    if node ~= ARGV[6] then table.insert(dead, node) end
  end
end
local out = {}
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  redis.call('SREM', prefix .. ':draining', node)
  local index = prefix .. ':node:' .. node .. ':presence'
  local lost = {}
  for _, member in ipairs(redis.call('SMEMBERS', index)) do
    local cut = string.find(member, '\\0', 1, true)
    local key = string.sub(member, 1, cut - 1)
    local sid = string.sub(member, cut + 1)
    local pkey = prefix .. ':presence:' .. key
    -- only the node's own entry: the socket may have been restored elsewhere under its id
    if redis.call('HGET', pkey, sid) == node then
      redis.call('HDEL', pkey, sid)
      if redis.call('HLEN', pkey) == 0 then table.insert(lost, key) end
    end
  end
  redis.call('DEL', index, prefix .. ':node:' .. node)
  if event == 'dead' then
    redis.call('SET', prefix .. ':reaped:' .. node, ARGV[6], 'EX', 3600)
  end
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. cjson.encode({t = 'node', ev = event, node = node, epoch = epoch}))
  table.insert(out, node)
  table.insert(out, lost)
end
return out
"""

# KEYS: presence:KEY, node presence index, presence-done:KEY     ARGV: sid, node, index member, call id
# -> 1 when KEY just came online (its first socket anywhere). The answer is remembered per
# call for two minutes, so a call retried after a timeout returns the first run's answer
# instead of a second, different one (a lost or doubled user-online). Per call, not per
# socket: a recovered socket comes back with its old id and is a new attach. Call ids are
# unique per process (`RedisPresence._call_id`), not per node id: a node restarted under
# its id must not be answered with its previous process's answers.
ATTACH = """
local done = redis.call('HGET', KEYS[3], 'a' .. ARGV[4])
if done then return tonumber(done) end
local first = 0
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 and redis.call('HLEN', KEYS[1]) == 1 then first = 1 end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'a' .. ARGV[4], first)
redis.call('EXPIRE', KEYS[3], 120)
return first
"""

# KEYS: presence:KEY, node presence index, presence-done:KEY     ARGV: sid, index member, node, call id
# -> 1 when KEY just went offline (its last socket anywhere is gone); remembered like ATTACH.
# Only this node's entry is removed: the socket may have been recovered on another node
# (same id) while its entry here lingered.
DETACH = """
local done = redis.call('HGET', KEYS[3], 'd' .. ARGV[4])
if done then return tonumber(done) end
redis.call('SREM', KEYS[2], ARGV[2])
local last = 0
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('HLEN', KEYS[1]) == 0 then last = 1 end
end
redis.call('HSET', KEYS[3], 'd' .. ARGV[4], last)
redis.call('EXPIRE', KEYS[3], 120)
return last
"""

# Make this node's presence entries exactly the given (key, sid) pairs (after a Redis outage
# or restart). Entries another node holds are left alone: that node restored the socket
# (same id) while ours lingered, or while this node id was a process that crashed.
# KEYS: node presence index   ARGV: prefix, node, key1, sid1, key2, sid2, ...
# -> {lost keys (no socket left anywhere), found keys (online again only through us)}
RESYNC = """
local prefix = ARGV[1]
local want = {}
for i = 3, #ARGV, 2 do want[ARGV[i] .. '\\0' .. ARGV[i + 1]] = {ARGV[i], ARGV[i + 1]} end
local lost = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not want[member] then
    local cut = string.find(member, '\\0', 1, true)
    local key, sid = string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
    local pkey = prefix .. ':presence:' .. key
    redis.call('SREM', KEYS[1], member)
    if redis.call('HGET', pkey, sid) == ARGV[2] then
      redis.call('HDEL', pkey, sid)
      if redis.call('HLEN', pkey) == 0 then table.insert(lost, key) end
    end
  end
end
local found = {}
for member, pair in pairs(want) do
  local pkey = prefix .. ':presence:' .. pair[1]
  local holder = redis.call('HGET', pkey, pair[2])
  if not holder or holder == ARGV[2] then
    redis.call('SADD', KEYS[1], member)
    if redis.call('HSET', pkey, pair[2], ARGV[2]) == 1 and redis.call('HLEN', pkey) == 1 then
      table.insert(found, pair[1])
    end
  else
    redis.call('SREM', KEYS[1], member)
  end
end
return {lost, found}
"""

# Move presence entries of sockets that moved to another node (the upgrade landed there), so
# that node's death takes them offline and ours does not.
# KEYS: our presence index, the new node's index   ARGV: prefix, our node, new node, key1, sid1, ...
# -> how many entries moved
MOVE = """
local moved = 0
for i = 4, #ARGV, 2 do
  local key, sid = ARGV[i], ARGV[i + 1]
  local pkey = ARGV[1] .. ':presence:' .. key
  local member = key .. '\\0' .. sid
  redis.call('SREM', KEYS[1], member)
  if redis.call('HGET', pkey, sid) == ARGV[2] then
    redis.call('HSET', pkey, sid, ARGV[3])
    redis.call('SADD', KEYS[2], member)
    moved = moved + 1
  end
end
return moved
"""

# ---------------------------------------------------------------------------- recovery log
#
# One log per namespace (``P:rlog:NSP``, a list) with its bookkeeping (``P:rlog:NSP:m``, a
# hash: ``last`` offset given, ``bytes`` held, ``p:ORIGIN`` / ``b:ORIGIN`` packets and bytes
# each origin socket holds). The list holds consecutive offsets only, so the entry of offset
# X sits at index X - (last - LLEN + 1). Entries are ``AT_MS SP ORIGIN SP ENVELOPE`` (the
# broadcast envelope as published, see `coup.cluster.envelope`). The first offset of a new log
# is Redis's clock in microseconds, so a log lost with a Redis restart starts above every
# offset it gave before: an old offset reads as "gone", never as a position in the new log.

# Append broadcasts to the log and publish them, one script call per node per loop turn.
# KEYS: log, meta
# ARGV: per message: channel count N, N channels, FLAGS, (a once key when FLAGS says so,) data.
#       FLAGS: one digit, then the origin socket ('' for none): 0 delivered only, 1 kept (a
#       recovery offset), 2 / 3 the same with a once key.
# The log's limits (window_ms, max_packets, max_bytes, origin_packets, origin_bytes, ttl_ms,
# once_ms) are written into the script's first line (`log_publish`), not sent with each call.
# A message with a once key is published (and kept) only if no message with that key was in
# the last once_ms (``P:rlog:NSP:once:KEY``, set here, in the same step as the publish: so a
# repeat of a broadcast the node died before publishing goes out, and one that was published
# does not go out twice; see `coup.core.adapter.BroadcastOptions.once`).
# A broadcast (stamp 1) the budget admits is published as ``L OFFSET SP DATA``; anything else
# as ``L SP DATA`` (delivered, not kept: the node's other publishes of the turn ride along,
# so they stay ordered with its broadcasts). Consecutive messages for one channel go out as
# one PUBLISH (``M`` + 4-byte length + message, each), so a room command's broadcast and its
# answer on the room's channel make one push; order across channels is never changed, which
# keeps each node's view of the log in offset order. -> the origins refused this call
# The script runs once per node per loop turn and most turns carry one broadcast, so its cost
# is per call: the fewest inner calls (an origin is charged with two HINCRBYs and given back
# in the rare refusal, not read first), the age looked at through the oldest entry alone until
# one is old (LINDEX: one Lua string, not sixteen), trimming in chunks a 64th below the bound
# once it is reached (not one LPOP and its give-back per append), and numbers formatted as integers
# (Lua's float formatting showed in Redis's profile; a Lua number given to `redis.call` is
# formatted as a float too, hence `string.format('%d', ...)`); the limits in the text and two
# arguments per message, not six. In Redis's profile under chat load a fifth of its CPU was
# Lua itself: making strings (Redis's Lua hashes every byte of each) and collecting them, so
# fewer strings per call count as much as fewer inner calls. docs/architecture.md has the figures.
LOG_PUBLISH = """
local log, meta = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local now = string.format('%d', now_ms)
local refused = {}
local added, count, admitted = 0, 0, 0
local last_offset = 0
local created = false
local run_channel, run, runs = nil, nil, 0
-- a run of consecutive messages for one channel goes out as one PUBLISH ('M' + length-prefixed parts)
local function publish_run()
  if runs == 1 then
    redis.call('PUBLISH', run_channel, run[1])
  elseif runs > 1 then
    local parts = {'M'}
    for r = 1, runs do
      parts[#parts + 1] = struct.pack('>I4', #run[r])
      parts[#parts + 1] = run[r]
    end
    redis.call('PUBLISH', run_channel, table.concat(parts))
  end
end
local i = 1
local last_arg = #ARGV
while i <= last_arg do
  local n = tonumber(ARGV[i])
  local first_channel = i + 1
  local flags = ARGV[i + n + 1]
  local kind = string.byte(flags)  -- '0' 48, '1' 49, '2' 50, '3' 51
  local once = nil
  i = i + n + 2
  if kind > 49 then
    once = ARGV[i]
    i = i + 1
  end
  local data = ARGV[i]
  i = i + 1
  repeat  -- `break` skips this message
  if once and not redis.call('SET', log .. ':once:' .. once, '1', 'NX', 'PX', once_ms) then
    break  -- published before (this is a repeat of it): not again
  end
  local size = #data
  local payload
  if (kind == 49 or kind == 51) and size <= origin_bytes then
    local admit = true
    local origin = ''
    if #flags > 1 then  -- charged at once; given back when that puts it over its share (rare)
      origin = string.sub(flags, 2)
      local packets = redis.call('HINCRBY', meta, 'p:' .. origin, '1')
      local held = redis.call('HINCRBY', meta, 'b:' .. origin, string.format('%d', size))
      if packets > origin_packets or held > origin_bytes then
        admit = false
        refused[#refused + 1] = origin
        if packets <= 1 then
          redis.call('HDEL', meta, 'p:' .. origin, 'b:' .. origin)
        else
          redis.call('HINCRBY', meta, 'p:' .. origin, '-1')
          redis.call('HINCRBY', meta, 'b:' .. origin, string.format('%d', -size))
        end
      end
    end
    if admit then
      local offset = redis.call('HINCRBY', meta, 'last', '1')
      if offset == 1 then  -- a new log: start above every offset an earlier one gave
        offset = t[1] * 1000000 + t[2]
        redis.call('HSET', meta, 'last', string.format('%d', offset))
        created = true
      end
      count = redis.call('RPUSH', log, now .. ' ' .. origin .. ' ' .. data)
      added = added + size
      last_offset = offset
      admitted = admitted + 1
      payload = 'L' .. string.format('%d', offset) .. ' ' .. data
    end
  end
  payload = payload or ('L ' .. data)
  if n == 1 and ARGV[first_channel] == run_channel then
    runs = runs + 1
    run[runs] = payload
  else
    publish_run()
    if n == 1 then
      run_channel, run, runs = ARGV[first_channel], {payload}, 1
    else
      run_channel, run, runs = nil, nil, 0
      for c = first_channel, first_channel + n - 1 do
        redis.call('PUBLISH', ARGV[c], payload)
      end
    end
  end
  until true
end
publish_run()
if admitted == 0 then return refused end
local bytes = redis.call('HINCRBY', meta, 'bytes', string.format('%d', added))
-- over a bound, the log is trimmed a 64th below it: one LPOP (and one give-back per origin)
-- every few hundred broadcasts instead of an LPOP and its give-back with each one. The age
-- is looked at every 16th offset (a memory bound, not a promise: sessions expire with the
-- window); the count and the bytes every call
local check_age = last_offset % 16 < admitted
local over = count > max_packets or bytes > max_bytes
if over or check_age then
  local keep_packets = max_packets - math.floor(max_packets / 64)
  local keep_bytes = max_bytes - math.floor(max_bytes / 64)
  local horizon = now_ms - window_ms
  local gone = {}
  local trimmed = false
  local head_checked = false
  while count > 0 do
    local heads
    if over and (count > keep_packets or bytes > keep_bytes) then
      local n = count - keep_packets
      if bytes > keep_bytes then  -- as many entries as the excess bytes take, on average
        n = math.max(n, math.ceil((bytes - keep_bytes) * count / bytes))
      end
      heads = redis.call('LPOP', log, math.max(1, math.min(count, n)))
    elseif check_age then
      if not head_checked then  -- the oldest entry first: one string, not sixteen, while none is old
        head_checked = true
        local oldest = redis.call('LINDEX', log, 0)
        if not oldest then break end
        if tonumber(string.sub(oldest, 1, string.find(oldest, ' ', 1, true) - 1)) >= horizon then break end
      end
      heads = redis.call('LRANGE', log, 0, 15)
      local old = 0
      for _, head in ipairs(heads) do
        if tonumber(string.sub(head, 1, string.find(head, ' ', 1, true) - 1)) >= horizon then break end
        old = old + 1
      end
      if old == 0 then break end
      redis.call('LTRIM', log, old, -1)
      if old < 16 then check_age = false end
      heads = {unpack(heads, 1, old)}
    else
      break
    end
    for _, head in ipairs(heads) do
      local sp = string.find(head, ' ', 1, true)
      local sp2 = string.find(head, ' ', sp + 1, true)
      local size = #head - sp2
      local origin = string.sub(head, sp + 1, sp2 - 1)
      bytes = bytes - size
      if origin ~= '' then
        local g = gone[origin]
        if g then
          g[1], g[2] = g[1] + 1, g[2] + size
        else
          gone[origin] = {1, size}
        end
      end
    end
    count = count - #heads
    trimmed = true
  end
  for origin, g in pairs(gone) do
    if redis.call('HINCRBY', meta, 'p:' .. origin, string.format('%d', -g[1])) <= 0 then
      redis.call('HDEL', meta, 'p:' .. origin, 'b:' .. origin)
    else
      redis.call('HINCRBY', meta, 'b:' .. origin, string.format('%d', -g[2]))
    end
  end
  if trimmed then redis.call('HSET', meta, 'bytes', string.format('%d', bytes)) end
end
if created then  -- kept alive by the nodes' refresh (`RedisRecoveryLog.refresh`) from now on
  redis.call('PEXPIRE', log, ttl_ms)
  redis.call('PEXPIRE', meta, ttl_ms)
end
return refused
"""

def log_publish(window_ms: int, max_packets: int, max_bytes: int, origin_packets: int, origin_bytes: int,
                ttl_ms: int, once_ms: int, sharded: bool) -> str:
    """`LOG_PUBLISH` for one log's limits (its first line; every call of it the same), with
    SPUBLISH on a Redis Cluster (`publishing`)."""
    limits = (window_ms, max_packets, max_bytes, origin_packets, origin_bytes, ttl_ms, once_ms)
    return ("local window_ms, max_packets, max_bytes, origin_packets, origin_bytes, ttl_ms, once_ms = "
            + ", ".join(str(int(v)) for v in limits) + publishing(LOG_PUBLISH, sharded))


# What a client at offset X missed: {first offset returned, entries...}; {} when the log no
# longer holds all of it (or never gave X): never a partial replay. With ARGV[2] = '1' only
# says whether it could ({} or {first offset}).
# KEYS: log, meta   ARGV: offset X, check only
LOG_READ = """
local last = redis.call('HGET', KEYS[2], 'last')
if not last then return {} end
last = tonumber(last)
local wanted = tonumber(ARGV[1])
if not wanted then return {} end
local count = redis.call('LLEN', KEYS[1])
local first = last - count + 1
if wanted < first - 1 or wanted > last then return {} end
local out = {string.format('%.0f', wanted + 1)}
if ARGV[2] == '1' then return out end
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], wanted - first + 1, -1)) do
  table.insert(out, entry)
end
return out
"""

# Log groups (several logs per namespace, docs/cluster.md#redis-cluster): the last offset a
# group's log gave, made when it has none yet (Redis's clock in microseconds, as a new log
# starts), so every group has a head a client's vector can name before its first broadcast;
# and whether everything after a client's offset is still in the log.
# KEYS: log, meta   ARGV: offset ('' for none), ttl_ms   -> {last, 1 when the log holds all after the offset}
LOG_HEAD = """
local last = redis.call('HGET', KEYS[2], 'last')
if not last then
  local t = redis.call('TIME')
  last = t[1] .. string.sub('000000' .. t[2], -6)
  redis.call('HSET', KEYS[2], 'last', last)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local wanted = tonumber(ARGV[1])
if not wanted then return {last, 0} end
local head = tonumber(last)
if wanted < head - redis.call('LLEN', KEYS[1]) or wanted > head then return {last, 0} end
return {last, 1}
"""

# Write a session record ``NODE \\n JSON`` (``P:session:NSP:PID``) with the recovery window as
# its time to live. ARGV[4] = 'live' (a connected socket: create or refresh), 'take' (a socket
# that moved here from another node: overwrite) or 'left' (it disconnected: refresh only our
# own). Otherwise never overwrites a record another node wrote: that node restored the
# session (claimed it and connected it there) and we are a stale holder.
# 'drop' deletes our own record (the socket left for good: nobody may restore it).
# KEYS: record   ARGV: node, json, ttl_ms, mode   -> 1 written (or dropped), 0 not ours
# Take a session record for a restore (one node wins). A script, not a plain GETDEL, so the
# bus sends it to the primary of the record's slot on a Redis Cluster. KEYS: record
SESSION_CLAIM = """
return redis.call('GETDEL', KEYS[1])
"""

SESSION_SAVE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.sub(cur, 1, string.find(cur, '\\n', 1, true) - 1)
  if holder ~= ARGV[1] and ARGV[4] ~= 'take' then return 0 end
  if ARGV[4] == 'drop' then return redis.call('DEL', KEYS[1]) end
elseif ARGV[4] ~= 'live' and ARGV[4] ~= 'take' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. ARGV[2], 'PX', ARGV[3])
return 1
"""

# A broadcast with a once key while the recovery log is off (`LOG_PUBLISH` does this with it):
# published on the channels only if no broadcast with that key was in the last once_ms. With no
# channels it only marks the key (a Redis Cluster: the channels need not share its slot).
# KEYS: the once key   ARGV: once_ms, data, channels...   -> 1 published, 0 a repeat
ONCE_PUBLISH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for c = 3, #ARGV do redis.call('PUBLISH', ARGV[c], ARGV[2]) end
return 1
"""

# The node-sequenced recovery log (`coup.cluster.origin_log`): one list per origin (a node's
# link-up), entries ``NUMBER SP AT_US SP ORIGIN_SOCKET SP ENVELOPE`` numbered from 1 without gaps
# (its node trims it, always keeping its newest entry, so the last entry names its head). Per
# live origin (``live``: origin -> its expiry in ms, dropped here with its log once past it):
# ARGV[2] = 'heads': {1, origin, head, 0, ...}; 'check': {0} when the epoch is not ARGV[1] or a
# count or byte trim (``lost``: origin -> the last number it dropped) took an entry after the
# client's vector (ARGV[4..]: origin, number pairs), else as 'heads'; 'read': as 'check', each
# origin followed by its entries after the client's number.
# KEYS: meta, live, lost   ARGV: epoch, mode, list key prefix, origin, number, ...
ORIGIN_READ = """
local mode = ARGV[2]
if mode ~= 'heads' and redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {0} end
local want = {}
for i = 4, #ARGV, 2 do want[ARGV[i]] = tonumber(ARGV[i + 1]) end
if mode ~= 'heads' then
  local lost = redis.call('HGETALL', KEYS[3])
  for i = 1, #lost, 2 do
    if (want[lost[i]] or 0) < tonumber(lost[i + 1]) then return {0} end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {1}
local live = redis.call('HGETALL', KEYS[2])
for i = 1, #live, 2 do
  local origin = live[i]
  local key = ARGV[3] .. origin
  if tonumber(live[i + 1]) < now then
    redis.call('HDEL', KEYS[2], origin)
    redis.call('HDEL', KEYS[3], origin)
    redis.call('DEL', key)
  else
    local last = redis.call('LINDEX', key, -1)
    local head = last and tonumber(string.match(last, '^%d+')) or 0
    table.insert(out, origin)
    table.insert(out, head)
    local entries = {}
    if mode == 'read' and head > 0 then
      local first = tonumber(string.match(redis.call('LINDEX', key, 0), '^%d+'))
      local from = (want[origin] or 0) + 1 - first
      if from < 0 then from = 0 end
      if from <= head - first then entries = redis.call('LRANGE', key, from, -1) end
    end
    table.insert(out, #entries)
    for _, entry in ipairs(entries) do table.insert(out, entry) end
  end
end
return out
"""
