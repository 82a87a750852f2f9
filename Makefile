# cibad - OpenID CIBA authorization server
#
#   make            build ./cibad (-Wall -Wextra -Werror)
#   make run        private PostgreSQL under var/, migrate, demo client and user, serve
#   make check      unit and end-to-end tests against a throwaway PostgreSQL
#   make check SANITIZE=1   the same suite under AddressSanitizer and UBSan
#   make bench      load figures with wrk (see docs/benchmarks.md)
#   make lint       clang-format check and cppcheck
#   make format     rewrite sources with clang-format

CC       ?= cc
PKGS      = libevent libevent_openssl libevent_pthreads jansson libjwt openssl libpq
OPTFLAGS ?= -O2 -g
CFLAGS   += -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wformat=2 \
            -Wno-missing-field-initializers -I. $(OPTFLAGS) \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread

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
            $(BUILD)/check_notify
TEST_LIBS = $(shell pkg-config --libs check 2>/dev/null)

.PHONY: all deps run check bench lint format clean

all: deps $(BIN)
	@ln -sf $(BIN) cibad

deps:
	@deploy/install-deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BIN): $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/check_util: $(BUILD)/tests/check_util.o $(call mod_objs,util)
$(BUILD)/check_server: $(BUILD)/tests/check_server.o $(call mod_objs,util) \
    $(BUILD)/server/form.o $(BUILD)/server/config.o
$(BUILD)/check_storage: $(BUILD)/tests/check_storage.o $(call mod_objs,util storage)
$(BUILD)/check_sms: $(BUILD)/tests/check_sms.o $(BUILD)/tests/mock_http.o \
    $(call mod_objs,util sms)
$(BUILD)/check_oauth: $(BUILD)/tests/check_oauth.o $(call mod_objs,util) \
    $(BUILD)/oauth/errors.o $(BUILD)/oauth/client_auth.o $(BUILD)/oauth/keys.o \
    $(BUILD)/oauth/jose.o $(BUILD)/oauth/discovery.o
$(BUILD)/check_e2e: $(BUILD)/tests/check_e2e.o $(BUILD)/tests/mock_http.o \
    $(BUILD)/tests/e2e_client.o $(call mod_objs,util)
$(BUILD)/check_notify: $(BUILD)/tests/check_notify.o $(BUILD)/tests/mock_http.o \
    $(BUILD)/tests/e2e_client.o $(BUILD)/ciba/endpoint.o $(call mod_objs,util sms)

$(TEST_BINS):
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(TEST_LIBS)

run: all
	@deploy/run-local.sh

check: all $(TEST_BINS)
	@tests/no-sql-outside-storage.sh
	@CIBAD_BIN=$(abspath $(BIN)) tests/run.sh $(abspath $(TEST_BINS))

bench: all
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
