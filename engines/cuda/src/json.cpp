#include "json.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fq {
namespace {

struct Parser {
  const std::string& t;
  size_t i = 0;
  void ws() {
    while (i < t.size() && (t[i] == ' ' || t[i] == '\n' || t[i] == '\r' || t[i] == '\t')) i++;
  }
  [[noreturn]] void fail(const char* what) {
    throw std::runtime_error(std::string("JSON: ") + what + " at offset " + std::to_string(i));
  }
  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  unsigned hex4() {
    if (i + 4 > t.size()) fail("short \\u escape");
    unsigned v = unsigned(strtoul(t.substr(i, 4).c_str(), nullptr, 16));
    i += 4;
    return v;
  }
  std::string str() {
    if (t[i] != '"') fail("expected string");
    i++;
    std::string out;
    while (i < t.size() && t[i] != '"') {
      char c = t[i++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= t.size()) fail("bad escape");
      char e = t[i++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= t.size() && t[i] == '\\' && t[i + 1] == 'u') {
            i += 2;
            unsigned lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: out += e;
      }
    }
    if (i >= t.size()) fail("unterminated string");
    i++;
    return out;
  }
  Json value() {
    ws();
    if (i >= t.size()) fail("unexpected end");
    Json j;
    char c = t[i];
    if (c == '{') {
      j.kind = Json::Obj;
      i++;
      ws();
      if (t[i] == '}') {
        i++;
        return j;
      }
      for (;;) {
        ws();
        std::string k = str();
        ws();
        if (t[i] != ':') fail("expected ':'");
        i++;
        j.o[k] = value();
        ws();
        if (t[i] == ',') {
          i++;
          continue;
        }
        if (t[i] == '}') {
          i++;
          return j;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      j.kind = Json::Arr;
      i++;
      ws();
      if (t[i] == ']') {
        i++;
        return j;
      }
      for (;;) {
        j.a.push_back(value());
        ws();
        if (t[i] == ',') {
          i++;
          continue;
        }
        if (t[i] == ']') {
          i++;
          return j;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      j.kind = Json::Str;
      j.s = str();
      return j;
    }
    if (t.compare(i, 4, "true") == 0) {
      j.kind = Json::Bool;
      j.b = true;
      i += 4;
      return j;
    }
    if (t.compare(i, 5, "false") == 0) {
      j.kind = Json::Bool;
      i += 5;
      return j;
    }
    if (t.compare(i, 4, "null") == 0) {
      i += 4;
      return j;
    }
    char* end = nullptr;
    j.n = strtod(t.c_str() + i, &end);
    if (end == t.c_str() + i) fail("bad value");
    j.kind = Json::Num;
    i = size_t(end - t.c_str());
    return j;
  }
};

const Json kNull;

}  // namespace

Json Json::parse(const std::string& text) {
  Parser p{text};
  return p.value();
}

const Json& Json::operator[](const std::string& k) const {
  if (kind != Obj) return kNull;
  auto it = o.find(k);
  return it == o.end() ? kNull : it->second;
}

double Json::num(const std::string& k, double dflt) const {
  const Json& v = (*this)[k];
  return v.kind == Num ? v.n : dflt;
}

std::string Json::str(const std::string& k, const std::string& dflt) const {
  const Json& v = (*this)[k];
  return v.kind == Str ? v.s : dflt;
}

std::string json_escape(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += char(c);
    } else if (c < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += char(c);
    }
  }
  return o + "\"";
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace fq
