# cibad - OpenID CIBA authorization server
#
#   make            build ./cibad (-Wall -Wextra -Werror)
#   make run        private PostgreSQL under var/, migrate, demo client and user, serve
#   make check      unit and end-to-end tests against a throwaway PostgreSQL, and the
#                   openid-client interoperability test when Node.js is present
#   make check SANITIZE=1   the same suite under AddressSanitizer and UBSan
#   make bench      load figures with wrk (see docs/benchmarks.md)
#   make lint       clang-format check and cppcheck
#   make format     rewrite sources with clang-format
#
# Every goal except clean and format runs in two passes. The first pass runs
# $(INSTALL_DEPS), which installs the missing Debian packages (as root) or stops with
# the apt-get line to run. The second pass, a sub-make, does the work: its pkg-config
# calls run only after the packages are in place, and a package pkg-config still cannot
# find stops the build with its name instead of leaving a compiler flag out.

INSTALL_DEPS ?= deploy/install-deps.sh

ifndef CIBAD_DEPS_DONE

GOALS := $(or $(MAKECMDGOALS),all)

.PHONY: $(GOALS) deps-then-make

$(GOALS): deps-then-make
	@:

deps-then-make:
ifneq ($(filter-out clean format,$(GOALS)),)
	@$(INSTALL_DEPS) $(if $(filter lint,$(GOALS)),--lint)
endif
	@$(MAKE) --no-print-directory CIBAD_DEPS_DONE=1 $(MAKECMDGOALS)

else

CC       ?= cc
PKGS      = libevent libevent_openssl libevent_pthreads jansson openssl libpq
OPTFLAGS ?= -O2 -g

# Goals that compile nothing, so they need no pkg-config flags.
NO_BUILD_GOALS = clean format lint deps
ifneq ($(filter-out $(NO_BUILD_GOALS),$(or $(MAKECMDGOALS),all)),)
PKG_MISSING := $(strip $(foreach p,$(PKGS) check,\
                   $(if $(shell pkg-config --exists $(p) && echo found),,$(p))))
ifneq ($(PKG_MISSING),)
$(error pkg-config cannot find $(PKG_MISSING): run $(INSTALL_DEPS) as root to install \
        the Debian packages, or set PKG_CONFIG_PATH)
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS))
TEST_LIBS  := $(shell pkg-config --libs check)
endif

CFLAGS   += -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wformat=2 \
            -Wno-missing-field-initializers -I. $(OPTFLAGS) $(PKG_CFLAGS)
LDLIBS   += $(PKG_LIBS) -lpthread

ifeq ($(SANITIZE),1)
BUILD    ?= build/sanitize
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
OPTFLAGS  = -O1 -g
else
BUILD    ?= build/release
endif

MODULES   = util server ciba oauth sms storage
SRCS      = $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
OBJS      = $(SRCS:%.c=$(BUILD)/%.o)
TEST_SRCS = $(wildcard tests/*.c)
TEST_OBJS = $(TEST_SRCS:%.c=$(BUILD)/%.o)
BIN       = $(BUILD)/cibad
mod_objs  = $(filter $(foreach m,$(1),$(BUILD)/$(m)/%),$(OBJS))

# One Check binary per suite, each linked with only the modules it tests, so a suite
# builds while unrelated modules are being changed. The e2e suite drives $(BIN).
TEST_BINS = $(BUILD)/check_util $(BUILD)/check_server $(BUILD)/check_storage \
            $(BUILD)/check_sms $(BUILD)/check_oauth $(BUILD)/check_e2e \
            $(BUILD)/check_notify $(BUILD)/check_tls

.PHONY: all deps run check bench lint format clean

all: $(BIN)
	@ln -sf $(BIN) cibad

# The first pass has installed the packages already.
deps:
	@:

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BIN): $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/check_util: $(BUILD)/tests/check_util.o $(call mod_objs,util)
$(BUILD)/check_server: $(BUILD)/tests/check_server.o $(call mod_objs,util) \
    $(BUILD)/server/form.o $(BUILD)/server/config.o $(BUILD)/server/http.o \
    $(BUILD)/server/tls.o \
    $(BUILD)/oauth/errors.o $(BUILD)/tests/e2e_client.o
$(BUILD)/check_storage: $(BUILD)/tests/check_storage.o $(call mod_objs,util storage)
$(BUILD)/check_sms: $(BUILD)/tests/check_sms.o $(BUILD)/tests/mock_http.o \
    $(call mod_objs,util sms)
$(BUILD)/check_oauth: $(BUILD)/tests/check_oauth.o $(call mod_objs,util) \
    $(BUILD)/oauth/errors.o $(BUILD)/oauth/client_auth.o $(BUILD)/oauth/keys.o \
    $(BUILD)/oauth/jose.o $(BUILD)/oauth/jwk.o $(BUILD)/oauth/discovery.o \
    $(BUILD)/oauth/client_assertion.o $(BUILD)/oauth/jwks_cache.o $(BUILD)/oauth/mtls.o \
    $(BUILD)/oauth/client_meta.o $(BUILD)/ciba/request_object.o $(BUILD)/tests/mock_http.o
$(BUILD)/check_e2e: $(BUILD)/tests/check_e2e.o $(BUILD)/tests/mock_http.o \
    $(BUILD)/tests/e2e_client.o $(call mod_objs,util)
$(BUILD)/check_tls: $(BUILD)/tests/check_tls.o $(BUILD)/tests/mock_http.o \
    $(BUILD)/tests/e2e_client.o $(call mod_objs,util)
$(BUILD)/check_notify: $(BUILD)/tests/check_notify.o $(BUILD)/tests/mock_http.o \
    $(BUILD)/tests/e2e_client.o $(BUILD)/ciba/endpoint.o $(call mod_objs,util sms)

$(TEST_BINS):
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(TEST_LIBS)

run: all
	@deploy/run-local.sh

check: all $(TEST_BINS)
	@tests/no-sql-outside-storage.sh
	@tests/make-deps.sh
	@CIBAD_BIN=$(abspath $(BIN)) tests/run.sh $(abspath $(TEST_BINS)) \
	    $(abspath tests/interop/interop.sh)

# A tiny loopback SMS gateway for `make bench`: 200 to every POST, bodies to a file.
$(BUILD)/bench_sink: $(BUILD)/tests/bench_sink.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ES256 client assertions for the private_key_jwt runs of `make bench`.
$(BUILD)/bench_jwt: $(BUILD)/tests/bench_jwt.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench: all $(BUILD)/bench_sink $(BUILD)/bench_jwt
	@CIBAD_BIN=$(abspath $(BIN)) tests/bench.sh

lint:
	clang-format --dry-run -Werror $(SRCS) $(TEST_SRCS) $(wildcard */*.h)
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	    --inline-suppr --std=c11 -I. $(MODULES)

format:
	clang-format -i $(SRCS) $(TEST_SRCS) $(wildcard */*.h)

clean:
	rm -rf build cibad

-include $(OBJS:.o=.d) $(TEST_OBJS:.o=.d)

endif
