#!lua name=ratelimit
--[[
The rate limiter's commands as a Redis Functions library, for servers that cannot load the
module (hosted Redis and Valkey): the same arguments after the key count, the same replies,
error texts and bounds, and the same stored state, so keys move between the module and this
library without resetting anyone's limits.

  FUNCTION LOAD REPLACE "$(cat functions/ratelimit.lua)"
  FCALL rl_check 1 key limit window [COST n] [BURST b] [KEEP k] [FORCE]
  FCALL rl_checkall numkeys key [key ...] limit window cost burst [keep] [...]
  FCALL_RO rl_peek 1 key limit window [BURST b]
  FCALL rl_refund 1 key limit window amount [BURST b]
  FCALL rl_reset 1 key
  FCALL cl_throttle 1 key max_burst count_per_period period [quantity]
  FCALL rl_acquire 1 key max lease_ms ID id
  FCALL rl_release 1 key id
  FCALL rl_renew 1 key id lease_ms
  FCALL_RO rl_version 0

Where Functions are missing (Redis 6.2), the same source runs as a script, with its first
line (the shebang) blanked: EVALSHA sha numkeys key... <function name> args...

Exactness. Lua numbers are doubles, exact only up to 2^53, while the module's GCRA works in
units of 1/limit nanosecond (u128). So every time and amount here is a natural number held in
base-10^7 limbs (`Big`), with the module's exact operations and roundings; only values known
to stay below 2^53 (milliseconds, lease deadlines, counts) are plain numbers, and every
number passed to redis.call is formatted here (never by tostring, which prints 1e+15). One
limit the module does not have: a reply is a Lua number, so a burst above 2^53 (which
`remaining` and `burst` would carry) is refused with its own error.

The clock is read once per call (TIME), in nanoseconds. Writes are replicated as their
effects (SET ... PXAT, DEL, ZADD, ZREM, ZREMRANGEBYSCORE, PEXPIREAT): the same commands the
module replicates.
]]

local VERSION = '1'

-- Everything is defined on the first call, not while the library loads: Redis 7.0 offers no
-- `math` or `string` to the code that registers functions. The definitions are kept for
-- every later call (a script run by EVALSHA builds them per call).
local function build()

  -- ---------------------------------------------------------------------------------------
  -- Natural numbers in base-10^7 limbs, least significant first; zero is the empty table.
  -- Every intermediate value stays below 2^53: limb products are below 10^14.

  local BASE = 10000000
  local BASE_DIGITS = 7
  local floor = math.floor
  local sformat = string.format
  local ssub = string.sub

  local function trim(a)
    local n = #a
    while n > 0 and a[n] == 0 do
      a[n] = nil
      n = n - 1
    end
    return a
  end

  -- A plain non-negative integer below 2^53.
  local function big(x)
    local a = {}
    local i = 0
    while x > 0 do
      i = i + 1
      local q = floor(x / BASE)
      a[i] = x - q * BASE
      x = q
    end
    return a
  end

  -- A string of decimal digits (already checked).
  local function parse_big(s)
    local a = {}
    local i = 0
    local stop = #s
    while stop > 0 do
      local start = stop - BASE_DIGITS + 1
      if start < 1 then start = 1 end
      i = i + 1
      a[i] = tonumber(ssub(s, start, stop))
      stop = start - 1
    end
    return trim(a)
  end

  local function big_str(a)
    local n = #a
    if n == 0 then return '0' end
    local parts = { sformat('%d', a[n]) }
    for i = n - 1, 1, -1 do
      parts[#parts + 1] = sformat('%07d', a[i])
    end
    return table.concat(parts)
  end

  -- The value as a Lua number (callers know it is below 2^53).
  local function big_num(a)
    local x = 0
    for i = #a, 1, -1 do
      x = x * BASE + a[i]
    end
    return x
  end

  local function cmp(a, b)
    local na, nb = #a, #b
    if na ~= nb then return na < nb and -1 or 1 end
    for i = na, 1, -1 do
      local x, y = a[i], b[i]
      if x ~= y then return x < y and -1 or 1 end
    end
    return 0
  end

  local function add(a, b)
    local r = {}
    local carry = 0
    local n = #a > #b and #a or #b
    for i = 1, n do
      local s = (a[i] or 0) + (b[i] or 0) + carry
      if s >= BASE then
        r[i] = s - BASE
        carry = 1
      else
        r[i] = s
        carry = 0
      end
    end
    if carry > 0 then r[n + 1] = carry end
    return r
  end

  -- a - b, for a >= b.
  local function sub(a, b)
    local r = {}
    local borrow = 0
    for i = 1, #a do
      local s = a[i] - (b[i] or 0) - borrow
      if s < 0 then
        r[i] = s + BASE
        borrow = 1
      else
        r[i] = s
        borrow = 0
      end
    end
    return trim(r)
  end

  -- max(a - b, 0), as the module's saturating_sub.
  local function sat_sub(a, b)
    if cmp(a, b) <= 0 then return {} end
    return sub(a, b)
  end

  local function mul(a, b)
    local na, nb = #a, #b
    if na == 0 or nb == 0 then return {} end
    local r = {}
    for i = 1, na + nb do r[i] = 0 end
    for i = 1, na do
      local carry = 0
      local ai = a[i]
      for j = 1, nb do
        local t = r[i + j - 1] + ai * b[j] + carry
        carry = floor(t / BASE)
        r[i + j - 1] = t - carry * BASE
      end
      local k = i + nb
      while carry > 0 do
        local t = r[k] + carry
        carry = floor(t / BASE)
        r[k] = t - carry * BASE
        k = k + 1
      end
    end
    return trim(r)
  end

  -- a * m for a plain 0 <= m < BASE.
  local function mul_small(a, m)
    local r = {}
    local carry = 0
    local n = #a
    for i = 1, n do
      local t = a[i] * m + carry
      carry = floor(t / BASE)
      r[i] = t - carry * BASE
    end
    if carry > 0 then r[n + 1] = carry end
    return trim(r)
  end

  -- floor(a / b) and a mod b, for b > 0 (Knuth's algorithm D in base 10^7).
  local function divmod(a, b)
    local n = #b
    if cmp(a, b) < 0 then
      local copy = {}
      for i = 1, #a do copy[i] = a[i] end
      return {}, copy
    end
    if n == 1 then
      local d = b[1]
      local q = {}
      local r = 0
      for i = #a, 1, -1 do
        local cur = r * BASE + a[i]
        local qi = floor(cur / d)
        q[i] = qi
        r = cur - qi * d
      end
      return trim(q), (r == 0 and {} or { r })
    end
    -- Normalise so that the divisor's top limb is at least BASE / 2.
    local f = floor(BASE / (b[n] + 1))
    local u = mul_small(a, f)
    local v = mul_small(b, f)
    local m = #a - n
    for i = #u + 1, #a + 1 do u[i] = 0 end
    local vtop, vnext = v[n], v[n - 1]
    local q = {}
    for j = m, 0, -1 do
      local num = u[j + n + 1] * BASE + u[j + n]
      local qhat = floor(num / vtop)
      local rhat = num - qhat * vtop
      while qhat >= BASE or qhat * vnext > rhat * BASE + u[j + n - 1] do
        qhat = qhat - 1
        rhat = rhat + vtop
        if rhat >= BASE then break end
      end
      local borrow, carry = 0, 0
      for i = 1, n do
        local p = qhat * v[i] + carry
        carry = floor(p / BASE)
        local t = u[i + j] - (p - carry * BASE) - borrow
        if t < 0 then
          u[i + j] = t + BASE
          borrow = 1
        else
          u[i + j] = t
          borrow = 0
        end
      end
      local top = u[j + n + 1] - carry - borrow
      if top < 0 then
        -- qhat was one too large: add the divisor back.
        qhat = qhat - 1
        local c = 0
        for i = 1, n do
          local s = u[i + j] + v[i] + c
          if s >= BASE then
            u[i + j] = s - BASE
            c = 1
          else
            u[i + j] = s
            c = 0
          end
        end
        top = top + c
      end
      u[j + n + 1] = top
      q[j + 1] = qhat
    end
    local rem = {}
    for i = 1, n do rem[i] = u[i] end
    local r = divmod(trim(rem), { f })
    return trim(q), r
  end

  local function div_ceil(a, b)
    local q, r = divmod(a, b)
    if #r > 0 then q = add(q, { 1 }) end
    return q
  end

  local ZERO = {}
  local ONE = { 1 }
  local NANOS_PER_SECOND = big(1000000000)
  local NANOS_PER_MILLI = big(1000000)
  local MAX_TOLERANCE_NANOS = mul(big(100 * 365 * 24 * 3600), NANOS_PER_SECOND)
  local I64_MAX = '9223372036854775807'
  local U64_MAX = '18446744073709551615'
  local BIG_I64_MAX = parse_big(I64_MAX)
  -- Replies are Lua numbers: a burst must fit one exactly.
  local MAX_REPLY_INTEGER = 9007199254740992
  local MIN_TAT_NANOS = '1000000000000000000'

  -- ---------------------------------------------------------------------------------------
  -- Errors, word for word the module's.

  local MAX_CHECKALL_KEYS = 64
  local MAX_LEASES = 10000
  local MAX_LEASE_MS = 86400000
  local MAX_ID_BYTES = 256
  local MAX_ECHOED_BYTES = 128
  local MARKER = '\0rl-leases'

  local CHECK_USAGE = 'RL.CHECK key limit window [COST cost] [BURST burst] [KEEP keep] [FORCE]'
  local CHECKALL_USAGE =
    'RL.CHECKALL numkeys key [key ...] limit window cost burst [keep] [limit window cost burst [keep] ...]'
  local PEEK_USAGE = 'RL.PEEK key limit window [BURST burst]'
  local REFUND_USAGE = 'RL.REFUND key limit window amount [BURST burst]'
  local RESET_USAGE = 'RL.RESET key'
  local ACQUIRE_USAGE = 'RL.ACQUIRE key max lease_ms ID id'
  local RELEASE_USAGE = 'RL.RELEASE key id'
  local RENEW_USAGE = 'RL.RENEW key id lease_ms'
  local THROTTLE_USAGE = 'CL.THROTTLE key max_burst count_per_period period [quantity]'

  -- A refusal travels as a Lua error holding this table, and becomes the reply at the top.
  local function fail(message)
    error({ rl_error = message }, 0)
  end

  local function arity(usage) fail('ERR wrong number of arguments, usage: ' .. usage) end
  local function not_positive(name) fail('ERR ' .. name .. ' must be a positive integer') end
  local function negative(name) fail('ERR ' .. name .. ' must be a non-negative integer') end
  local function too_large(name) fail('ERR ' .. name .. ' is out of range: at most ' .. I64_MAX) end
  -- The bytes as text, each maximal invalid UTF-8 sequence replaced by U+FFFD (what the
  -- module's String::from_utf8_lossy does).
  local REPLACEMENT = '\239\191\189'
  local function lossy(s)
    local byte = string.byte
    local out = {}
    local i, n = 1, #s
    local function cont(at, low, high)
      local b = byte(s, at)
      return b ~= nil and b >= low and b <= high
    end
    while i <= n do
      local b = byte(s, i)
      local width, low, high = 1, 0x80, 0xBF
      if b < 0x80 then
        width = 0
      elseif b >= 0xC2 and b <= 0xDF then
        width = 2
      elseif b >= 0xE0 and b <= 0xEF then
        width = 3
        if b == 0xE0 then low = 0xA0 elseif b == 0xED then high = 0x9F end
      elseif b >= 0xF0 and b <= 0xF4 then
        width = 4
        if b == 0xF0 then low = 0x90 elseif b == 0xF4 then high = 0x8F end
      end
      if width == 0 then
        out[#out + 1] = string.char(b)
        i = i + 1
      elseif width == 1 then
        out[#out + 1] = REPLACEMENT
        i = i + 1
      else
        -- How many bytes of the sequence are valid: the first, then its continuations.
        local good = 1
        if cont(i + 1, low, high) then
          good = 2
          while good < width and cont(i + good, 0x80, 0xBF) do good = good + 1 end
        end
        if good == width then
          out[#out + 1] = ssub(s, i, i + width - 1)
        else
          out[#out + 1] = REPLACEMENT
        end
        i = i + good
      end
    end
    return table.concat(out)
  end

  local function unknown_option(word, usage)
    -- NULs dropped, as the module does: Redis would end the error reply at the first one.
    local shown = string.gsub(lossy(ssub(word, 1, MAX_ECHOED_BYTES)), '%z', '')
    if #word > MAX_ECHOED_BYTES then shown = shown .. '...' end
    fail("ERR unknown option '" .. shown .. "', usage: " .. usage)
  end
  local function out_of_range(name, max)
    fail('ERR ' .. name .. ' must be an integer between 1 and ' .. sformat('%d', max))
  end
  local function bad_lease_id()
    fail('ERR id must be a non-empty string of at most ' .. MAX_ID_BYTES
      .. ' bytes, other than the reserved \\x00rl-leases')
  end
  local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
  local NOT_LIMITER_STATE = 'ERR key holds a string that is not rate-limiter state; it was left unchanged '
    .. '(delete it or use another key)'
  local NOT_LEASE_STATE = 'ERR key holds a sorted set that is not lease state; it was left unchanged '
    .. '(delete it or use another key)'
  local TOLERANCE_TOO_LARGE = 'ERR burst * window / limit must not exceed 100 years'
  local STATE_OUT_OF_RANGE = 'ERR stored rate-limiter state is out of range'

  -- ---------------------------------------------------------------------------------------
  -- Arguments, parsed as the module parses them (src/args.rs), in the same order.

  -- A canonical decimal i64 (as Redis's string2ll): its sign and digits, or nil.
  local function parse_i64(s)
    if s == nil then return nil end
    local negative_sign, digits = false, s
    if ssub(s, 1, 1) == '-' then
      negative_sign, digits = true, ssub(s, 2)
    end
    local n = #digits
    if n == 0 or n > 19 or not digits:find('^%d+$') then return nil end
    if ssub(digits, 1, 1) == '0' and (negative_sign or n > 1) then return nil end
    if n == 19 then
      if (not negative_sign and digits > I64_MAX) or (negative_sign and digits > '9223372036854775808') then
        return nil
      end
    end
    return negative_sign, digits
  end

  -- A canonical positive decimal too large for an i64.
  local function is_too_large(s)
    return s ~= nil and s:find('^[1-9]%d*$') ~= nil
  end

  -- ---------------------------------------------------------------------------------------
  -- Two kits of the same natural-number operations: plain Lua numbers (`N`), exact while
  -- every value stays below 2^53 (any larger result raises INEXACT), and the limbs (`B`),
  -- exact for every value. A rate-limit command runs with `N` (the common case: no table is
  -- made for a number) and, when a value would leave that range, again from the start with
  -- `B` (nothing is written before every decision is made, so the first run left no trace).

  local INEXACT = {}
  local function inexact() error(INEXACT, 0) end
  local N_LIMIT = 9007199254740992 -- 2^53: every integer below is a double
  local fmod = math.fmod

  local N = { ZERO = 0, ONE = 1, NS_PER_S = 1000000000, NS_PER_MS = 1000000, MAX_REPLY = MAX_REPLY_INTEGER }
  function N.digits(s)
    if #s > 15 then inexact() end
    return tonumber(s)
  end
  function N.add(a, b)
    local r = a + b
    if r >= N_LIMIT then inexact() end
    return r
  end
  function N.sat_sub(a, b)
    if a > b then return a - b end
    return 0
  end
  function N.mul(a, b)
    local r = a * b
    if r >= N_LIMIT then inexact() end
    return r
  end
  function N.cmp(a, b)
    if a < b then return -1 elseif a > b then return 1 end
    return 0
  end
  -- fmod is exact for doubles, and so is the division of the multiple of b it leaves.
  function N.divmod(a, b)
    local r = fmod(a, b)
    return (a - r) / b, r
  end
  function N.div_ceil(a, b)
    local q, r = N.divmod(a, b)
    if r > 0 then q = q + 1 end
    return q
  end
  function N.is_zero(a) return a == 0 end
  function N.num(a) return a end
  -- Below 2^53, the tolerance is always within 100 years x limit (>= 3.15e18).
  function N.tolerance_ok() return true end
  -- TIME as {sec, nsub}: whole seconds and the nanoseconds within the second.
  function N.clock(t) return { sec = tonumber(t[1]), nsub = tonumber(t[2]) * 1000 } end

  local B = { ZERO = ZERO, ONE = ONE, NS_PER_S = NANOS_PER_SECOND, NS_PER_MS = NANOS_PER_MILLI,
    MAX_REPLY = big(MAX_REPLY_INTEGER) }
  B.digits, B.add, B.sat_sub, B.mul, B.cmp, B.divmod, B.div_ceil = parse_big, add, sat_sub, mul, cmp, divmod,
    div_ceil
  function B.is_zero(a) return #a == 0 end
  B.num = big_num
  function B.tolerance_ok(tolerance, limit) return cmp(tolerance, mul(MAX_TOLERANCE_NANOS, limit)) <= 0 end
  -- TIME in nanoseconds.
  function B.clock(t) return parse_big(t[1] .. sformat('%06d', tonumber(t[2])) .. '000') end

  -- The offset after now of a stored TAT (0 when it is not after now), in units of 1/limit
  -- ns; a fraction written under another limit is rounded up, never in the caller's favour.
  function N.offset(q, tat, now)
    local sec, nsub = tonumber(ssub(tat.nanos, 1, 10)), tonumber(ssub(tat.nanos, 11))
    local dsec = sec - now.sec
    if dsec < 0 or (dsec == 0 and (nsub < now.nsub or (nsub == now.nsub and tat.num == nil))) then return 0 end
    if dsec > 4000000 then inexact() end
    local fraction = 0
    if tat.num ~= nil then
      if tat.den == q.limit_str then
        fraction = N.digits(tat.num)
      else
        fraction = N.div_ceil(N.mul(N.digits(tat.num), q.limit), N.digits(tat.den))
      end
    end
    return N.add(N.mul(dsec * 1000000000 + (nsub - now.nsub), q.limit), fraction)
  end

  function B.offset(q, tat, now)
    local nanos = parse_big(tat.nanos)
    local c = cmp(nanos, now)
    if c < 0 or (c == 0 and tat.num == nil) then return ZERO end
    local fraction = ZERO
    if tat.num ~= nil then
      if tat.den == q.limit_str then
        fraction = parse_big(tat.num)
      else
        fraction = div_ceil(mul(parse_big(tat.num), q.limit), parse_big(tat.den))
      end
    end
    return add(mul(sub(nanos, now), q.limit), fraction)
  end

  -- The state to store for the TAT `ahead` after now: {value, expiry} as the module writes
  -- them (the expiry: the first millisecond at or after the TAT).
  function N.tat_at(q, now, ahead)
    local whole, numerator = N.divmod(ahead, q.limit)
    local carry, nsub = N.divmod(N.add(now.nsub, whole), 1000000000)
    local sec = now.sec + carry
    if sec > 9223372036 or (sec == 9223372036 and nsub > 854775807) then fail(STATE_OUT_OF_RANGE) end
    local value = sformat('%d%09d', sec, nsub)
    local extra = 0
    if numerator > 0 then
      value = value .. '+' .. sformat('%d', numerator) .. '/' .. q.limit_str
      extra = 1
    end
    return { value = value, expiry = sformat('%d', sec * 1000 + floor((nsub + extra + 999999) / 1000000)) }
  end

  function B.tat_at(q, now, ahead)
    local whole, numerator = divmod(ahead, q.limit)
    local nanos = add(now, whole)
    if cmp(nanos, BIG_I64_MAX) > 0 then fail(STATE_OUT_OF_RANGE) end
    local value, last = big_str(nanos), nanos
    if #numerator > 0 then
      value = value .. '+' .. big_str(numerator) .. '/' .. q.limit_str
      last = add(nanos, ONE)
    end
    return { value = value, expiry = big_str(div_ceil(last, NANOS_PER_MILLI)) }
  end

  -- An integer in 1..i64::MAX: its value in kit K, and its digits.
  local function positive(K, s, name)
    local neg, digits = parse_i64(s)
    if digits == nil then
      if is_too_large(s) then too_large(name) end
      not_positive(name)
    end
    if neg or digits == '0' then not_positive(name) end
    return K.digits(digits), digits
  end

  -- An integer in 0..i64::MAX, in kit K.
  local function non_negative(K, s, name)
    local neg, digits = parse_i64(s)
    if digits == nil then
      if is_too_large(s) then too_large(name) end
      negative(name)
    end
    if neg then negative(name) end
    return K.digits(digits)
  end

  -- An integer in 1..max (a plain number).
  local function bounded(s, name, max)
    local neg, digits = parse_i64(s)
    if digits == nil or neg or #digits > 15 then out_of_range(name, max) end
    local v = tonumber(digits)
    if v < 1 or v > max then out_of_range(name, max) end
    return v
  end

  -- A quota in kit K: limit (and its digits), window (s), burst, and in units of 1/limit ns
  -- the emission interval, the tolerance and one millisecond.
  local function quota(K, limit, limit_str, window, burst)
    local interval = K.mul(window, K.NS_PER_S)
    local tolerance = K.mul(interval, burst)
    if not K.tolerance_ok(tolerance, limit) then fail(TOLERANCE_TOO_LARGE) end
    return { limit = limit, limit_str = limit_str, burst = burst, interval = interval, tolerance = tolerance,
      millisecond = K.mul(limit, K.NS_PER_MS) }
  end

  local function upper(s) return string.upper(s) end

  -- `[COST n] [BURST b] [KEEP k] [FORCE]` from line[first] on.
  local function parse_options(K, line, first, allow_cost, usage)
    local o = {}
    local i = first
    while line[i] ~= nil do
      -- Every option is at most 5 bytes: a longer word is unknown without upper-casing it
      -- (a 20 MB word would take longer to upper-case than the whole command should).
      local word = #line[i] <= 5 and upper(line[i]) or ''
      local value = line[i + 1]
      local step = 2
      if word == 'COST' and allow_cost then
        if o.cost then fail('ERR option COST given more than once') end
        if value == nil then fail('ERR option COST needs a value') end
        o.cost = non_negative(K, value, 'cost')
      elseif word == 'BURST' then
        if o.burst then fail('ERR option BURST given more than once') end
        if value == nil then fail('ERR option BURST needs a value') end
        o.burst = positive(K, value, 'burst')
      elseif word == 'KEEP' and allow_cost then
        if o.keep then fail('ERR option KEEP given more than once') end
        if value == nil then fail('ERR option KEEP needs a value') end
        o.keep = non_negative(K, value, 'keep')
      elseif word == 'FORCE' and allow_cost then
        if o.force then fail('ERR option FORCE given more than once') end
        o.force = true
        step = 1
      else
        unknown_option(line[i], usage)
      end
      i = i + step
    end
    if o.force and o.keep then fail('ERR KEEP and FORCE cannot be combined') end
    return o
  end

  -- `key limit window <fixed> [options]`; line[1] is the command name, line[2] the key.
  local function parse_keyed_quota(K, line, fixed, allow_cost, usage)
    if #line < 4 + fixed then arity(usage) end
    local limit, limit_str = positive(K, line[3], 'limit')
    local window = positive(K, line[4], 'window')
    local o = parse_options(K, line, 5 + fixed, allow_cost, usage)
    return quota(K, limit, limit_str, window, o.burst or limit), o
  end

  -- Replies carry `burst` and `remaining` as Lua numbers.
  local function reply_sized(K, q)
    if K.cmp(q.burst, K.MAX_REPLY) > 0 then
      fail('ERR burst must be at most ' .. sformat('%d', MAX_REPLY_INTEGER)
        .. ' with the Functions library (its replies are Lua numbers); the module takes up to ' .. I64_MAX)
    end
    return q
  end

  local function lease_id(s)
    if s == nil or #s == 0 or #s > MAX_ID_BYTES or s == MARKER then bad_lease_id() end
    return s
  end

  -- ---------------------------------------------------------------------------------------
  -- The stored state (src/state.rs).

  local function canonical(digits, max_len)
    local n = #digits
    return n > 0 and n <= max_len and (n == 1 or ssub(digits, 1, 1) ~= '0')
  end

  -- Canonical decimals a <= b.
  local function at_most(a, b)
    return #a < #b or (#a == #b and a <= b)
  end

  -- A stored TAT as its decimal parts {nanos, num, den} (num nil for a whole nanosecond), or
  -- nil when the string is not limiter state.
  local function decode(s)
    -- The longest state is 19 + 1 + 20 + 1 + 20 bytes; a longer string is foreign, known
    -- without scanning it.
    if #s > 61 then return nil end
    local nanos, num, den = s:match('^(%d+)%+(%d+)/(%d+)$')
    if nanos == nil then
      nanos = s:match('^(%d+)$')
      if nanos == nil then return nil end
    end
    if #nanos ~= 19 or not canonical(nanos, 19) or nanos > I64_MAX or nanos < MIN_TAT_NANOS then
      return nil
    end
    if num == nil then return { nanos = nanos } end
    if not canonical(num, 20) or not canonical(den, 20) or not at_most(num, U64_MAX) or not at_most(den, U64_MAX) then
      return nil
    end
    if num == '0' or at_most(den, num) then return nil end
    return { nanos = nanos, num = num, den = den }
  end

  -- The TAT at `key`, nil for no key; refuses other types and foreign strings.
  local function read_tat(key)
    local ok, value = pcall(redis.call, 'GET', key)
    if not ok then fail(WRONGTYPE) end
    if not value then return nil end
    local tat = decode(value)
    if tat == nil then fail(NOT_LIMITER_STATE) end
    return tat
  end

  local function write_tat(key, state)
    redis.call('SET', key, state.value, 'PXAT', state.expiry)
  end

  -- ---------------------------------------------------------------------------------------
  -- GCRA (src/gcra.rs) in kit K, with every instant as its offset after now in units of
  -- 1/limit ns (an instant at or before now is offset 0, as the module's max(TAT, now)).

  local function millis_ceil(K, q, scaled)
    return K.num(K.div_ceil(scaled, q.millisecond))
  end

  local function tokens_left(K, q, offset)
    local left = K.divmod(K.sat_sub(q.tolerance, offset), q.interval)
    if K.cmp(left, q.burst) > 0 then left = q.burst end
    return K.num(left)
  end

  -- A decision: allowed, remaining, retry (0 now, -1 never, else ms), reset (ms), and the
  -- state to write (nil: nothing).
  local function decide_keeping(K, q, stored, now, cost, keep)
    local d = K.ZERO
    if stored ~= nil then d = K.offset(q, stored, now) end
    local needed = K.add(cost, keep)
    if K.cmp(needed, q.burst) > 0 then
      return { allowed = false, remaining = tokens_left(K, q, d), retry = -1, reset = millis_ceil(K, q, d) }
    end
    if K.is_zero(needed) then
      return { allowed = true, remaining = tokens_left(K, q, d), retry = 0, reset = millis_ceil(K, q, d) }
    end
    local earliest = K.sat_sub(K.add(d, K.mul(q.interval, needed)), q.tolerance)
    if not K.is_zero(earliest) then
      return { allowed = false, remaining = tokens_left(K, q, d), retry = millis_ceil(K, q, earliest),
        reset = millis_ceil(K, q, d) }
    end
    local new_d = K.add(d, K.mul(q.interval, cost))
    local decision = { allowed = true, remaining = tokens_left(K, q, new_d), retry = 0,
      reset = millis_ceil(K, q, new_d) }
    if not K.is_zero(cost) then decision.state = K.tat_at(q, now, new_d) end
    return decision
  end

  -- FORCE: always admitted; the debt is capped at one full burst beyond the bucket.
  local function decide_forced(K, q, stored, now, cost)
    if K.is_zero(cost) then return decide_keeping(K, q, stored, now, K.ZERO, K.ZERO) end
    local d = K.ZERO
    if stored ~= nil then d = K.offset(q, stored, now) end
    local cap = K.add(q.tolerance, q.tolerance)
    -- A charge beyond the cap is forgiven: its exact size does not matter.
    local new_d = cap
    if K.cmp(cost, K.add(K.divmod(cap, q.interval), K.ONE)) <= 0 then
      new_d = K.add(d, K.mul(q.interval, cost))
      if K.cmp(new_d, cap) > 0 then new_d = cap end
    end
    if K.cmp(new_d, d) < 0 then new_d = d end
    local decision = { allowed = true, remaining = tokens_left(K, q, new_d), retry = 0,
      reset = millis_ceil(K, q, new_d) }
    if K.cmp(new_d, d) > 0 then decision.state = K.tat_at(q, now, new_d) end
    return decision
  end

  local function check_row(K, decision, q)
    return { decision.allowed and 1 or 0, decision.remaining, decision.retry, decision.reset, K.num(q.burst) }
  end

  -- ---------------------------------------------------------------------------------------
  -- The rate-limit commands: (kit, the module's command line {name, key..., args...}, TIME).

  local function take(K, key, request, now)
    local stored = read_tat(key)
    local decision
    if request.force then
      decision = decide_forced(K, request.quota, stored, now, request.cost)
    else
      decision = decide_keeping(K, request.quota, stored, now, request.cost, request.keep)
    end
    if decision.state then write_tat(key, decision.state) end
    return decision
  end

  local function rl_check(K, line, time)
    local q, o = parse_keyed_quota(K, line, 0, true, CHECK_USAGE)
    reply_sized(K, q)
    local request = { quota = q, cost = o.cost or K.ONE, keep = o.keep or K.ZERO, force = o.force }
    return check_row(K, take(K, line[2], request, K.clock(time)), q)
  end

  local function rl_peek(K, line, time)
    local q = parse_keyed_quota(K, line, 0, false, PEEK_USAGE)
    reply_sized(K, q)
    return check_row(K, decide_keeping(K, q, read_tat(line[2]), K.clock(time), K.ONE, K.ZERO), q)
  end

  local function rl_refund(K, line, time)
    local q = parse_keyed_quota(K, line, 1, false, REFUND_USAGE)
    local amount = non_negative(K, line[5], 'amount')
    reply_sized(K, q)
    local key = line[2]
    local now = K.clock(time)
    local stored = read_tat(key)
    if stored == nil then return { K.num(q.burst), 0 } end
    local d = K.offset(q, stored, now)
    if K.is_zero(amount) then return { tokens_left(K, q, d), millis_ceil(K, q, d) } end
    -- Giving back more than the offset empties it: the exact product does not matter.
    local new_d = K.ZERO
    if K.cmp(amount, K.divmod(d, q.interval)) <= 0 then new_d = K.sat_sub(d, K.mul(q.interval, amount)) end
    local state
    if not K.is_zero(new_d) then state = K.tat_at(q, now, new_d) end
    local reply = { tokens_left(K, q, new_d), millis_ceil(K, q, new_d) }
    if state then write_tat(key, state) else redis.call('DEL', key) end
    return reply
  end

  local function rl_reset(line)
    if #line ~= 2 then arity(RESET_USAGE) end
    local key = line[2]
    if read_tat(key) == nil then return 0 end
    redis.call('DEL', key)
    return 1
  end

  local function parse_checkall(K, line)
    local count = #line
    if count < 7 then arity(CHECKALL_USAGE) end
    local key_count = function()
      fail('ERR numkeys must be between 1 and ' .. MAX_CHECKALL_KEYS
        .. ' and match the keys and specs given, usage: ' .. CHECKALL_USAGE)
    end
    local neg, digits = parse_i64(line[2])
    if digits == nil or neg or #digits > 3 then key_count() end
    local numkeys = tonumber(digits)
    if numkeys < 1 or numkeys > MAX_CHECKALL_KEYS then key_count() end
    local per_key = floor((count - 2) / numkeys)
    local width
    if per_key == 5 then width = 4 elseif per_key == 6 then width = 5 else key_count() end
    if count ~= 2 + per_key * numkeys then key_count() end
    for i = 3, 2 + numkeys do
      for j = i + 1, 2 + numkeys do
        if line[i] == line[j] then fail('ERR RL.CHECKALL keys must be distinct') end
      end
    end
    local requests = {}
    for k = 0, numkeys - 1 do
      local at = 3 + numkeys + width * k
      local limit, limit_str = positive(K, line[at], 'limit')
      local window = positive(K, line[at + 1], 'window')
      local cost = non_negative(K, line[at + 2], 'cost')
      local burst = positive(K, line[at + 3], 'burst')
      local keep = K.ZERO
      if width == 5 then keep = non_negative(K, line[at + 4], 'keep') end
      requests[k + 1] = { quota = quota(K, limit, limit_str, window, burst), cost = cost, keep = keep }
    end
    return numkeys, requests
  end

  local function rl_checkall(K, line, time)
    local numkeys, requests = parse_checkall(K, line)
    for i = 1, numkeys do reply_sized(K, requests[i].quota) end
    local now = K.clock(time)
    -- Every key read and decided before any is written: a refusal or an error changes nothing.
    local stored, decisions = {}, {}
    local allowed = true
    for i = 1, numkeys do
      local r = requests[i]
      stored[i] = read_tat(line[2 + i])
      decisions[i] = decide_keeping(K, r.quota, stored[i], now, r.cost, r.keep)
      allowed = allowed and decisions[i].allowed
    end
    local retry = 0
    if not allowed then
      for i = 1, numkeys do
        local r = decisions[i].retry
        if r == -1 then
          retry = -1
          break
        end
        if not decisions[i].allowed and r > retry then retry = r end
      end
    end
    local rows = {}
    for i = 1, numkeys do
      local q = requests[i].quota
      local decision = decisions[i]
      if not allowed and decision.allowed then
        -- Would have admitted, but another limit refused: report the untouched state.
        decision = decide_keeping(K, q, stored[i], now, K.ZERO, K.ZERO)
      end
      rows[i] = check_row(K, decision, q)
    end
    if allowed then
      for i = 1, numkeys do
        if decisions[i].state then write_tat(line[2 + i], decisions[i].state) end
      end
    end
    return { allowed and 1 or 0, retry, rows }
  end

  local function seconds_ceil(ms)
    return floor((ms + 999) / 1000)
  end

  local function cl_throttle(K, line, time)
    local count = #line
    if count < 5 or count > 6 then arity(THROTTLE_USAGE) end
    local max_burst = non_negative(K, line[3], 'max_burst')
    local burst = K.add(max_burst, K.ONE)
    local per_period, per_period_str = positive(K, line[4], 'count_per_period')
    local period = positive(K, line[5], 'period')
    local cost = K.ONE
    if count == 6 then cost = non_negative(K, line[6], 'quantity') end
    local q = reply_sized(K, quota(K, per_period, per_period_str, period, burst))
    local decision = take(K, line[2], { quota = q, cost = cost, keep = K.ZERO }, K.clock(time))
    local retry_s = -1
    if decision.retry > 0 then retry_s = seconds_ceil(decision.retry) end
    return { decision.allowed and 0 or 1, K.num(q.burst), decision.remaining, retry_s, seconds_ceil(decision.reset) }
  end

  -- ---------------------------------------------------------------------------------------
  -- Concurrency leases (src/lease.rs, src/ffi/lease.rs): a sorted set of id -> deadline (ms),
  -- marked as lease state by MARKER scored 0.

  local function ms_str(x) return sformat('%d', x) end

  -- A score that can be a deadline: an integer within 1e12..2^53.
  local function is_deadline(score)
    return score ~= nil and score >= 1e12 and score <= MAX_REPLY_INTEGER and score == floor(score)
  end

  -- The lowest (`first`) or highest lease score, or nil.
  local function end_lease(key, first)
    local found
    if first then
      found = redis.call('ZRANGEBYSCORE', key, '(0', '+inf', 'WITHSCORES', 'LIMIT', '0', '1')
    else
      found = redis.call('ZREVRANGEBYSCORE', key, '+inf', '(0', 'WITHSCORES', 'LIMIT', '0', '1')
    end
    if found[2] == nil then return nil end
    return tonumber(found[2])
  end

  -- What the set holds at now_ms for `id`: live, expired, held (deadline or nil), last.
  local function read_leases(key, id, now_ms)
    local kind = redis.call('TYPE', key).ok
    if kind == 'none' then return { live = 0, expired = 0, exists = false } end
    if kind ~= 'zset' then fail(WRONGTYPE) end
    local marker_score = redis.call('ZSCORE', key, MARKER)
    if not marker_score or tonumber(marker_score) ~= 0 then fail(NOT_LEASE_STATE) end
    local length = redis.call('ZCARD', key)
    local lowest, highest = end_lease(key, true), end_lease(key, false)
    if length > MAX_LEASES + 1 or redis.call('ZCOUNT', key, '-inf', '0') ~= 1
      or (lowest ~= nil and not is_deadline(lowest)) or (highest ~= nil and not is_deadline(highest)) then
      fail(NOT_LEASE_STATE)
    end
    local expired = redis.call('ZCOUNT', key, '1', ms_str(now_ms))
    local held = redis.call('ZSCORE', key, id)
    return {
      live = length - 1 - expired,
      expired = expired,
      held = held and math.ceil(tonumber(held)) or nil,
      last = highest and math.ceil(highest) or nil,
      exists = true,
    }
  end

  local function holds(view, now_ms)
    return view.held ~= nil and view.held > now_ms
  end

  -- Purge the expired, apply `change` (returns whether it changed the set), then delete the
  -- set when only the marker is left, or let it expire with its last lease.
  local function write_leases(key, view, now_ms, change)
    local purged = view.expired > 0
    if purged then redis.call('ZREMRANGEBYSCORE', key, '1', ms_str(now_ms)) end
    if change() or purged then
      if redis.call('EXISTS', key) == 0 then return end
      local last = end_lease(key, false)
      if last == nil then
        redis.call('DEL', key)
        return
      end
      last = math.ceil(last)
      if last ~= view.last then redis.call('PEXPIREAT', key, ms_str(last)) end
    end
  end

  local function put_lease(key, view, id, deadline)
    if view.exists then
      redis.call('ZADD', key, ms_str(deadline), id)
    else
      redis.call('ZADD', key, '0', MARKER, ms_str(deadline), id)
    end
  end

  -- TIME in whole milliseconds, the unit of lease deadlines.
  local function millis(time)
    return tonumber(time[1]) * 1000 + floor(tonumber(time[2]) / 1000)
  end

  local function rl_acquire(line, time)
    if #line ~= 6 then arity(ACQUIRE_USAGE) end
    local max = bounded(line[3], 'max', MAX_LEASES)
    local lease_ms = bounded(line[4], 'lease_ms', MAX_LEASE_MS)
    if #line[5] ~= 2 or upper(line[5]) ~= 'ID' then unknown_option(line[5], ACQUIRE_USAGE) end
    local id = lease_id(line[6])
    local key = line[2]
    local now_ms = millis(time)
    local view = read_leases(key, id, now_ms)
    local acquired, in_flight, retry = false, view.live, 0
    if holds(view, now_ms) then
      acquired = true
    elseif view.live < max then
      acquired, in_flight = true, view.live + 1
    else
      -- The live lease whose end frees a slot: rank live - max + 1 (max may have been lowered).
      local rank = view.live - max + 1
      local found = redis.call('ZRANGEBYSCORE', key, '(' .. ms_str(now_ms), '+inf', 'WITHSCORES', 'LIMIT',
        ms_str(rank - 1), '1')
      retry = 1
      if found[2] ~= nil then
        retry = math.ceil(tonumber(found[2])) - now_ms
        if retry < 1 then retry = 1 end
      end
    end
    write_leases(key, view, now_ms, function()
      if acquired then put_lease(key, view, id, now_ms + lease_ms) end
      return acquired
    end)
    return { acquired and 1 or 0, in_flight, max, retry }
  end

  local function rl_release(line, time)
    if #line ~= 3 then arity(RELEASE_USAGE) end
    local id = lease_id(line[3])
    local key = line[2]
    local now_ms = millis(time)
    local view = read_leases(key, id, now_ms)
    local released = holds(view, now_ms)
    write_leases(key, view, now_ms, function()
      if released then redis.call('ZREM', key, id) end
      return released
    end)
    return released and 1 or 0
  end

  local function rl_renew(line, time)
    if #line ~= 4 then arity(RENEW_USAGE) end
    local id = lease_id(line[3])
    local lease_ms = bounded(line[4], 'lease_ms', MAX_LEASE_MS)
    local key = line[2]
    local now_ms = millis(time)
    local view = read_leases(key, id, now_ms)
    local renewed = holds(view, now_ms)
    write_leases(key, view, now_ms, function()
      if renewed then put_lease(key, view, id, now_ms + lease_ms) end
      return renewed
    end)
    return renewed and 1 or 0
  end

  -- A rate-limit command in plain numbers, and again in limbs when a value leaves their range.
  local function exact(handler)
    return function(line, time)
      local ok, result = pcall(handler, N, line, time)
      if ok then return result end
      if result == INEXACT then return handler(B, line, time) end
      error(result, 0)
    end
  end

  -- name -> {the module's command name, handler (line, TIME), keys it takes (nil: any number)}
  local COMMANDS = {
    rl_check = { 'RL.CHECK', exact(rl_check), 1 },
    rl_checkall = { 'RL.CHECKALL', exact(rl_checkall), nil },
    rl_peek = { 'RL.PEEK', exact(rl_peek), 1 },
    rl_refund = { 'RL.REFUND', exact(rl_refund), 1 },
    rl_reset = { 'RL.RESET', rl_reset, 1 },
    cl_throttle = { 'CL.THROTTLE', exact(cl_throttle), 1 },
    rl_acquire = { 'RL.ACQUIRE', rl_acquire, 1 },
    rl_release = { 'RL.RELEASE', rl_release, 1 },
    rl_renew = { 'RL.RENEW', rl_renew, 1 },
  }

  return COMMANDS
end

-- ---------------------------------------------------------------------------------------
-- Registration: as Functions (FUNCTION LOAD), or run as a script (EVAL/EVALSHA, ARGV[1]
-- naming the function).

-- ---------------------------------------------------------------------------------------
-- The fast path: RL.CHECK, RL.PEEK and CL.THROTTLE as most callers send them (every number
-- canonical and below 10^15, every sum and product below 2^53, the key holding a whole
-- nanosecond or a fraction written under the same limit), in plain arithmetic with nothing
-- made that the reply does not need. It answers nil, having written nothing, for anything
-- else (an unusual line, an error to report, a foreign or far-off value, a large number),
-- and the command then runs on the general path above, which gives the module's answer for
-- every input. Both are held to the module by the differential test.

-- It is defined apart from the general path, so that a script (EVALSHA, which runs the whole
-- source on every call) builds the general path only when the fast one declines.
--
-- Every value on this path stays below 2^52, where Lua's `%` (a - floor(a / b) * b) is off
-- at most by one b below zero, and an inline fix makes it exact without a function call.
local FAST = 4503599627370496

-- The library functions it uses, set on the first call (Redis 7.0 offers no `string` or
-- `math` while the library loads).
local find, ssub, sformat, upper, floor

-- A canonical decimal below 10^15, as a number; else nil. (Numbers are read by Lua's own
-- coercion, `s + 0`, where the spelling is already checked: cheaper than a call to tonumber.)
local function small(s)
  if s == nil then return nil end
  local n = #s
  -- (A string of digits that sorts before "1" starts with a zero.)
  if n == 0 or n > 15 or find(s, '%D') or (n > 1 and s < '1') then return nil end
  return s + 0
end

-- The decision for `cost` (+ `keep`) tokens, or nil. `force`: RL.CHECK ... FORCE; `write`:
-- store the new state (not for RL.PEEK). Returns allowed, remaining, retry, reset.
local function fast_decide(key, limit_str, limit, window, burst, cost, keep, force, write, time)
  local interval = window * 1000000000
  local tolerance = interval * burst
  local millisecond = limit * 1000000
  if tolerance + tolerance >= FAST or millisecond >= FAST then return nil end
  -- An error (another type) comes back as {err = ...}; indexing a string finds nothing.
  local value = redis.pcall('GET', key)
  if value and value.err then return nil end
  local sec_now, nsub_now = time[1] + 0, time[2] * 1000
  local d = 0
  if value then
    -- One match checks the spelling and splits seconds from nanoseconds.
    local sec_s, nsub_s, num, den, fraction
    if #value == 19 then
      sec_s, nsub_s = value:match('^(%d%d%d%d%d%d%d%d%d%d)(%d%d%d%d%d%d%d%d%d)$')
      fraction = 0
    elseif #value <= 61 then
      sec_s, nsub_s, num, den = value:match('^(%d%d%d%d%d%d%d%d%d%d)(%d%d%d%d%d%d%d%d%d)%+([1-9]%d*)/(%d+)$')
      if den ~= limit_str or #num > 15 then return nil end
      fraction = num + 0
      if fraction >= limit then return nil end
    end
    -- Within 10^18 ns (2001) and i64::MAX.
    if sec_s == nil or sec_s < '1000000000' or sec_s > '9223372035' then return nil end
    local dsec = sec_s - sec_now
    local nsub = nsub_s + 0
    if dsec > 0 or (dsec == 0 and (nsub > nsub_now or (nsub == nsub_now and fraction > 0))) then
      if dsec > 4000000 then return nil end
      d = (dsec * 1000000000 + nsub - nsub_now) * limit + fraction
      if d >= FAST then return nil end
    end
  end
  local new_d
  if force then
    if cost == 0 then
      new_d = d
    else
      local cap = tolerance + tolerance
      new_d = cap
      if cost <= cap / interval then
        new_d = d + interval * cost
        if new_d >= FAST then return nil end
        if new_d > cap then new_d = cap end
      end
      if new_d < d then new_d = d end
    end
  else
    local needed = cost + keep
    local refused = needed > burst
    local retry = -1
    if not refused and needed > 0 then
      local earliest = d + interval * needed
      if earliest >= FAST then return nil end
      earliest = earliest - tolerance
      if earliest > 0 then
        refused = true
        local r = earliest % millisecond
        if r < 0 then r = r + millisecond end
        retry = (earliest - r) / millisecond
        if r > 0 then retry = retry + 1 end
      end
    end
    if refused or needed == 0 then
      new_d = d
    else
      new_d = d + interval * cost
    end
    if refused then
      local left = 0
      if d < tolerance then
        local rest = tolerance - d
        local r = rest % interval
        if r < 0 then r = r + interval end
        left = (rest - r) / interval
        if left > burst then left = burst end
      end
      local r = d % millisecond
      if r < 0 then r = r + millisecond end
      local reset = (d - r) / millisecond
      if r > 0 then reset = reset + 1 end
      return false, left, retry, reset
    end
  end
  if write and new_d > d then
    local whole = new_d % limit
    if whole < 0 then whole = whole + limit end
    local numerator = whole
    whole = (new_d - numerator) / limit
    local total = nsub_now + whole
    local nsub = total % 1000000000
    if nsub < 0 then nsub = nsub + 1000000000 end
    local sec = sec_now + (total - nsub) / 1000000000
    if sec >= 9223372036 then return nil end
    local state = sformat('%d%09d', sec, nsub)
    if numerator > 0 then
      state = state .. '+' .. sformat('%d', numerator) .. '/' .. limit_str
      nsub = nsub + 1
    end
    local r = nsub % 1000000
    local ms = sec * 1000 + (nsub - r) / 1000000
    if r > 0 then ms = ms + 1 end
    redis.call('SET', key, state, 'PXAT', sformat('%d', ms))
  end
  local left = 0
  if new_d < tolerance then
    local rest = tolerance - new_d
    local r = rest % interval
    if r < 0 then r = r + interval end
    left = (rest - r) / interval
    if left > burst then left = burst end
  end
  local r = new_d % millisecond
  if r < 0 then r = r + millisecond end
  local reset = (new_d - r) / millisecond
  if r > 0 then reset = reset + 1 end
  return true, left, 0, reset
end

-- `key limit window [COST n] [BURST b] [KEEP k] [FORCE]` (RL.PEEK: `[BURST b]` only): the
-- key, and the arguments after it from args[first] on.
local function fast_check(key, args, first, time, peek)
  local n = #args
  local limit_str = args[first]
  local limit, window = small(limit_str), small(args[first + 1])
  if not limit or limit == 0 or not window or window == 0 then return nil end
  local cost, burst, keep, force = 1, limit, 0, false
  local has_cost, has_burst, has_keep = false, false, false
  local i = first + 2
  while i <= n do
    local word = args[i]
    if #word > 5 then return nil end
    word = upper(word)
    if word == 'FORCE' and not peek and not force then
      force = true
      i = i + 1
    else
      local v = small(args[i + 1])
      if v == nil then return nil end
      if word == 'COST' and not peek and not has_cost then
        cost, has_cost = v, true
      elseif word == 'BURST' and not has_burst and v > 0 then
        burst, has_burst = v, true
      elseif word == 'KEEP' and not peek and not has_keep then
        keep, has_keep = v, true
      else
        return nil
      end
      i = i + 2
    end
  end
  if force and has_keep then return nil end
  local allowed, remaining, retry, reset =
    fast_decide(key, limit_str, limit, window, burst, cost, keep, force, not peek, time)
  if allowed == nil then return nil end
  return { allowed and 1 or 0, remaining, retry, reset, burst }
end


-- `key max_burst count_per_period period [quantity]`.
local function fast_cl_throttle(key, args, first, time, _)
  local n = #args - first + 1
  if n < 3 or n > 4 then return nil end
  local max_burst, count, period = small(args[first]), small(args[first + 1]), small(args[first + 2])
  local quantity = 1
  if n == 4 then quantity = small(args[first + 3]) end
  if not max_burst or not count or count == 0 or not period or period == 0 or not quantity then return nil end
  local burst = max_burst + 1
  local allowed, remaining, retry, reset =
    fast_decide(key, args[first + 1], count, period, burst, quantity, 0, false, true, time)
  if allowed == nil then return nil end
  local retry_s = -1
  if retry > 0 then retry_s = floor((retry + 999) / 1000) end
  return { allowed and 0 or 1, burst, remaining, retry_s, floor((reset + 999) / 1000) }
end

-- name -> {the fast path, its last argument}.
local FAST_PATHS = {
  rl_check = { fast_check, false },
  rl_peek = { fast_check, true },
  cl_throttle = { fast_cl_throttle },
}

-- The clock, read once per call: TIME's seconds and microseconds.
local function server_time()
  return redis.call('TIME')
end

-- The functions registered, with their flags. As the module's commands: rl_peek only reads;
-- rl_reset, rl_release and rl_renew run on a server past maxmemory (they free memory, or keep
-- a holder's slot: a refused renewal would let its lease end and over-admit); the others are
-- refused there before they start.
local FUNCTIONS = {
  { 'rl_check', {} },
  { 'rl_checkall', {} },
  { 'rl_peek', { 'no-writes' } },
  { 'rl_refund', {} },
  { 'rl_reset', { 'allow-oom' } },
  { 'cl_throttle', {} },
  { 'rl_acquire', {} },
  { 'rl_release', { 'allow-oom' } },
  { 'rl_renew', { 'allow-oom' } },
}

local commands

-- A Redis error raised in a script, without what Redis 6.2 puts around it
-- (`@user_script: 12: -OOM ...\r\n`).
local function script_error_text(text)
  text = string.gsub(text, '^@[%w_]+: ?%d+: ', '')
  text = string.gsub(text, '^%-', '')
  return (string.gsub(text, '[\r\n]+$', ''))
end

-- The function `name`'s command, on the general path: the module's command line built from
-- KEYS and the arguments from args[first_arg] on, and the clock if already read.
local function general(name, keys, args, first_arg, time)
  commands = commands or build()
  local spec = commands[name]
  if spec == nil then
    return redis.error_reply("ERR unknown ratelimit function '" .. tostring(name) .. "'")
  end
  local key_count = #keys
  if spec[3] ~= nil and key_count ~= spec[3] then
    return redis.error_reply('ERR ' .. name .. ' takes exactly one key (numkeys 1)')
  end
  time = time or server_time()
  local line = { spec[1] }
  if spec[3] == nil then line[2] = string.format('%d', key_count) end
  for i = 1, key_count do line[#line + 1] = keys[i] end
  for i = first_arg, #args do line[#line + 1] = args[i] end
  local ok, result = pcall(spec[2], line, time)
  if ok then return result end
  if type(result) == 'table' and result.rl_error then return redis.error_reply(result.rl_error) end
  -- A Redis error from redis.call (OOM, READONLY...) or a bug: passed on as it is.
  error(result, 0)
end

-- The function `name`: the fast path where it has one and takes the call, else the general one.
local function runner(name, first_arg)
  local fast = FAST_PATHS[name]
  return function(keys, args)
    if fast and #keys == 1 then
      if not sformat then
        find, ssub, sformat, upper, floor = string.find, string.sub, string.format, string.upper, math.floor
      end
      local time = server_time()
      -- Its errors are Redis's own (a write refused), passed on as they are.
      local reply = fast[1](keys[1], args, first_arg, time, fast[2])
      if reply ~= nil then return reply end
      return general(name, keys, args, first_arg, time)
    end
    return general(name, keys, args, first_arg, nil)
  end
end

if redis.register_function then
  for i = 1, #FUNCTIONS do
    local name, flags = FUNCTIONS[i][1], FUNCTIONS[i][2]
    redis.register_function({
      function_name = name,
      callback = runner(name, 1),
      flags = flags,
    })
  end
  redis.register_function({
    function_name = 'rl_version',
    callback = function() return VERSION end,
    flags = { 'no-writes' },
  })
else
  if ARGV[1] == 'rl_version' then return VERSION end
  -- A script has no flags: Redis refuses its first write past maxmemory (OOM), not the call.
  -- That error is answered as the module words it, without the script's name and line.
  local ok, reply = pcall(runner(ARGV[1], 2), KEYS, ARGV)
  if ok then return reply end
  -- (Redis 7 raises it as a string, Redis 6.2 as {err = ...}; a Lua error would start with
  -- the chunk's name, not an upper-case code.)
  if type(reply) == 'table' then reply = reply.err end
  if type(reply) == 'string' then
    local text = script_error_text(reply)
    if string.find(text, '^%u[%u_]* ') then return redis.error_reply(text) end
  end
  error(reply, 0)
end
