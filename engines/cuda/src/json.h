// A small JSON reader/writer: enough for safetensors headers, config.json files, fixtures and protocol headers.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fq {

struct Json {
  enum Kind { Null, Bool, Num, Str, Arr, Obj } kind = Null;
  bool b = false;
  double n = 0;
  std::string s;
  std::vector<Json> a;
  std::map<std::string, Json> o;

  static Json parse(const std::string& text);
  bool has(const std::string& k) const { return kind == Obj && o.count(k) > 0; }
  const Json& operator[](const std::string& k) const;
  const Json& operator[](size_t i) const { return a.at(i); }
  double num(const std::string& k, double dflt) const;
  std::string str(const std::string& k, const std::string& dflt) const;
  bool is_null() const { return kind == Null; }
};

std::string json_escape(const std::string& s);
std::string read_text_file(const std::string& path);

}  // namespace fq
