-- SigV4 for nginx's Lua module (OpenResty style): the "Lua script" a user would otherwise put
-- in front of a private bucket, measured beside tailgate as `proxy-lua` (BENCH_LUA_PROXY=1).
-- Each request is signed as tailgate signs it: GET, UNSIGNED-PAYLOAD, `host`,
-- `x-amz-content-sha256` and `x-amz-date` signed (Range is sent, not signed). The day's signing
-- key and the second's date are kept, as a careful script would; SHA-256 and HMAC are
-- OpenSSL's, through LuaJIT's FFI (what lua-resty-string does), since nginx links libcrypto.
local ffi = require "ffi"
local bit = require "bit"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]]

local C = ffi.C
local sha256_md = C.EVP_sha256()
local digest = ffi.new("unsigned char[32]")
local digest_len = ffi.new("unsigned int[1]")
local hex_out = ffi.new("char[64]")
local hex_digits = ffi.new("const char[17]", "0123456789abcdef")

local function hex(bytes)
    for i = 0, 31 do
        local b = bytes[i]
        hex_out[2 * i] = hex_digits[bit.rshift(b, 4)]
        hex_out[2 * i + 1] = hex_digits[bit.band(b, 15)]
    end
    return ffi.string(hex_out, 64)
end

local function hmac(key, data)
    C.HMAC(sha256_md, key, #key, data, #data, digest, digest_len)
    return ffi.string(digest, 32)
end

local M = {}
local conf
local day_key, key_day
local date_secs, amz_date

-- conf: access_key, secret_key, region, host (the Host header the upstream receives).
function M.configure(c)
    conf = c
end

-- Signs this request for upstream `path` (URI-encoded as S3 expects) and sets the headers.
function M.sign(path)
    local now = ngx.time()
    if now ~= date_secs then
        date_secs, amz_date = now, os.date("!%Y%m%dT%H%M%SZ", now)
    end
    local day = amz_date:sub(1, 8)
    if day ~= key_day then
        local k = hmac("AWS4" .. conf.secret_key, day)
        k = hmac(k, conf.region)
        k = hmac(k, "s3")
        day_key, key_day = hmac(k, "aws4_request"), day
    end
    local canonical = "GET\n" .. path .. "\n\nhost:" .. conf.host
        .. "\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:" .. amz_date
        .. "\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD"
    C.SHA256(canonical, #canonical, digest)
    local scope = day .. "/" .. conf.region .. "/s3/aws4_request"
    local to_sign = "AWS4-HMAC-SHA256\n" .. amz_date .. "\n" .. scope .. "\n" .. hex(digest)
    C.HMAC(sha256_md, day_key, #day_key, to_sign, #to_sign, digest, digest_len)
    ngx.req.set_header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    ngx.req.set_header("x-amz-date", amz_date)
    ngx.req.set_header("authorization", "AWS4-HMAC-SHA256 Credential=" .. conf.access_key .. "/"
        .. scope .. ", SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" .. hex(digest))
end

return M
